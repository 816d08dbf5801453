package converter

import (
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
)

// gzipWriterPools holds reusable klauspost gzip writers per compression level.
// estargz opens a new gzip stream for every regular file; a level-9 writer
// costs about a megabyte to set up, so reusing them matters for layers with
// many small files.
var gzipWriterPools sync.Map // int -> *sync.Pool

func gzipWriterPool(level int) *sync.Pool {
	if p, ok := gzipWriterPools.Load(level); ok {
		return p.(*sync.Pool)
	}
	p, _ := gzipWriterPools.LoadOrStore(level, &sync.Pool{New: func() any {
		w, _ := gzip.NewWriterLevel(io.Discard, level)
		return w
	}})
	return p.(*sync.Pool)
}

// validGzipLevel reports an ErrInvalidArgument error for a level gzip lacks.
func validGzipLevel(level int) error {
	if level < gzip.HuffmanOnly || level > gzip.BestCompression {
		return fmt.Errorf("gzip compression level %d out of range [%d, %d]: %w",
			level, gzip.HuffmanOnly, gzip.BestCompression, errdefs.ErrInvalidArgument)
	}
	return nil
}

// payloadCompressor is an estargz.Compressor that writes the payload's gzip
// streams with pooled klauspost writers and hashes every uncompressed byte it
// is given. Since estargz.Unpack yields exactly the concatenation of those
// bytes, comparing the hash with the source's diffID proves (or disproves) a
// lossless conversion without decompressing the output again.
type payloadCompressor struct {
	level   int
	pool    *sync.Pool
	toc     *estargz.GzipCompressor
	payload hash.Hash
	size    int64
}

func newPayloadCompressor(level int) *payloadCompressor {
	return &payloadCompressor{
		level:   level,
		pool:    gzipWriterPool(level),
		toc:     estargz.NewGzipCompressorWithLevel(level),
		payload: sha256.New(),
	}
}

// Writer opens one gzip stream of the payload.
func (c *payloadCompressor) Writer(w io.Writer) (estargz.WriteFlushCloser, error) {
	gz := c.pool.Get().(*gzip.Writer)
	gz.Reset(w)
	return &pooledGzipWriter{gz: gz, c: c}, nil
}

// WriteTOCAndFooter writes the TOC and footer exactly as estargz's own gzip
// compressor does.
func (c *payloadCompressor) WriteTOCAndFooter(w io.Writer, off int64, toc *estargz.JTOC, diffHash hash.Hash) (digest.Digest, error) {
	return c.toc.WriteTOCAndFooter(w, off, toc, diffHash)
}

// PayloadDigest is the digest of every uncompressed payload byte written.
func (c *payloadCompressor) PayloadDigest() digest.Digest {
	return digest.NewDigestFromBytes(digest.SHA256, c.payload.Sum(nil))
}

type pooledGzipWriter struct {
	gz *gzip.Writer
	c  *payloadCompressor
}

func (p *pooledGzipWriter) Write(b []byte) (int, error) {
	n, err := p.gz.Write(b)
	p.c.payload.Write(b[:n])
	p.c.size += int64(n)
	return n, err
}

func (p *pooledGzipWriter) Flush() error { return p.gz.Flush() }

func (p *pooledGzipWriter) Close() error {
	if p.gz == nil {
		return nil
	}
	err := p.gz.Close()
	p.gz.Reset(io.Discard)
	p.c.pool.Put(p.gz)
	p.gz = nil
	return err
}
