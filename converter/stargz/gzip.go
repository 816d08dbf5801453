package stargz

import (
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

// gzipCompressor is the sequential eStargz compressor: an
// estargz.Compressor that writes the payload's gzip streams with pooled
// klauspost writers, one after the other, and hashes every uncompressed byte
// it is given (see payloadHash). parallelCompressor is its every-core twin.
type gzipCompressor struct {
	payloadHash
	level   int
	pool    *sync.Pool
	tocSize int64 // uncompressed bytes of the TOC's tar entry
}

func newGzipCompressor(level int) *gzipCompressor {
	return &gzipCompressor{payloadHash: newPayloadHash(), level: level, pool: gzipWriterPool(level)}
}

// Writer opens one gzip stream of the payload.
func (c *gzipCompressor) Writer(w io.Writer) (estargz.WriteFlushCloser, error) {
	return &hashingWriter{WriteFlushCloser: openPooledGzip(c.pool, w), p: &c.payloadHash}, nil
}

// WriteTOCAndFooter writes the TOC as estargz's gzip compressor does (a tar
// entry named stargz.index.json in its own gzip stream, then the footer
// pointing at it), but streams the JSON entry by entry instead of building it
// whole: estargz's MarshalIndent holds two copies of a TOC that is tens of
// megabytes for a layer of many files. The JSON is compact, not indented.
func (c *gzipCompressor) WriteTOCAndFooter(w io.Writer, off int64, toc tocSource, diffHash hash.Hash) (digest.Digest, error) {
	d, n, err := writeGzipTOC(w, off, c.level, toc, diffHash)
	c.tocSize = n
	return d, err
}

// UncompressedSize is the payload and the TOC's tar entry: eStargz's TOC is
// part of the layer's tar stream.
func (c *gzipCompressor) UncompressedSize() int64 { return c.size + c.tocSize }

// Annotations: eStargz has none beyond the common ones.
func (c *gzipCompressor) Annotations() map[string]string { return nil }

// pooledGzip is a gzip stream whose writer goes back to its pool when closed.
type pooledGzip struct {
	*gzip.Writer
	pool *sync.Pool
}

func openPooledGzip(pool *sync.Pool, w io.Writer) *pooledGzip {
	gz := pool.Get().(*gzip.Writer)
	gz.Reset(w)
	return &pooledGzip{Writer: gz, pool: pool}
}

func (p *pooledGzip) Close() error {
	err := p.Writer.Close()
	p.Writer.Reset(io.Discard)
	p.pool.Put(p.Writer)
	return err
}
