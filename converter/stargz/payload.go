package stargz

import (
	"crypto/sha256"
	"hash"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
)

// payloadHash hashes and counts every uncompressed payload byte a compressor
// is given. Since decompressing a layer's payload yields exactly those bytes,
// comparing the digest with the source's diffID proves (or disproves) a
// lossless conversion without decompressing the output again.
type payloadHash struct {
	h    hash.Hash
	size int64
}

func newPayloadHash() payloadHash { return payloadHash{h: sha256.New()} }

func (p *payloadHash) add(b []byte) {
	p.h.Write(b)
	p.size += int64(len(b))
}

// PayloadDigest is the digest of every uncompressed payload byte written.
func (p *payloadHash) PayloadDigest() digest.Digest {
	return digest.NewDigestFromBytes(digest.SHA256, p.h.Sum(nil))
}

// hashingWriter is a compressed stream that hashes what it is given.
type hashingWriter struct {
	estargz.WriteFlushCloser
	p *payloadHash
}

func (w *hashingWriter) Write(b []byte) (int, error) {
	n, err := w.WriteFlushCloser.Write(b)
	w.p.add(b[:n])
	return n, err
}
