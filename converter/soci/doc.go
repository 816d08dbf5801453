// Package soci builds the SOCI artifacts of an image (groundwork of the
// soci format, issue 22): the zTOC of each gzip layer and the SOCI index
// manifest v2 that lists them, with soci-snapshotter's own ztoc package
// (cgo, over Debian's static zlib) so that the bytes are what `soci
// convert` writes. Layers are never rewritten: a zTOC is a small blob beside
// its layer, stored under the caller's lease and linked from the layer blob
// by a variant label (so one layer shared by many images is indexed once,
// and garbage collection keeps the zTOC exactly as long as the layer).
//
// Its code needs cgo (soci-snapshotter's gzip checkpoints are zlib's); a
// build without cgo has none of it. It is not a format of the service yet:
// the soci format (a SOCI-enabled image binding the index) is to come.
package soci
