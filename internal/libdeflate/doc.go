// Package libdeflate is a minimal binding to libdeflate's whole-buffer gzip
// compressor (Debian's libdeflate-dev), linked statically so that the
// library's version, and with it the bytes a level writes, is the binary's
// own and not whatever shared library the host has. It is built with the
// libdeflate build tag and cgo; without them Available is false and New
// fails with ErrUnavailable.
package libdeflate

// The levels libdeflate has: 0 (stored) to 12 (slowest, smallest).
const (
	MinLevel = 0
	MaxLevel = 12
)
