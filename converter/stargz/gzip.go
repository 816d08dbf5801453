package stargz

import (
	"bytes"
	"fmt"
	"hash"
	"io"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"

	"github.com/lazyconv/lazyconv/internal/libdeflate"
)

// The deflate implementations eStargz's gzip streams can be written with.
// They write different bytes for the same level, so the choice is an option
// and part of the variant.
const (
	// DeflateLibdeflate is libdeflate (linked in with the libdeflate build
	// tag): each stream compressed whole, several times faster than
	// klauspost's at level 9 and smaller.
	DeflateLibdeflate = "libdeflate"
	// DeflateGo is klauspost/compress's gzip, in pure Go.
	DeflateGo = "go"
)

// DefaultDeflate is the deflate of a request that sets none: libdeflate
// where the build has it.
func DefaultDeflate() string {
	if libdeflate.Available {
		return DeflateLibdeflate
	}
	return DeflateGo
}

// validDeflate reports an unknown deflate (ErrInvalidArgument) or libdeflate
// asked of a build without it (ErrUnavailable).
func validDeflate(d string) error {
	switch d {
	case DeflateGo:
		return nil
	case DeflateLibdeflate:
		if !libdeflate.Available {
			_, err := libdeflate.New(9)
			return err
		}
		return nil
	}
	return fmt.Errorf("unknown deflate %q (%s or %s): %w", d, DeflateLibdeflate, DeflateGo, errdefs.ErrInvalidArgument)
}

// deflateIdentity names a deflate in variant keys: libdeflate's bytes depend
// on its version, so a build linking another version than the one lazyconv
// is built with (Debian bookworm's) names its version.
func deflateIdentity(d string) string {
	const pinned = "1.14"
	if d == DeflateLibdeflate && libdeflate.Version != pinned {
		return d + "-" + libdeflate.Version
	}
	return d
}

// validGzipLevel reports an ErrInvalidArgument error for a level gzip lacks.
func validGzipLevel(level int) error {
	if level < gzip.HuffmanOnly || level > gzip.BestCompression {
		return fmt.Errorf("gzip compression level %d out of range [%d, %d]: %w",
			level, gzip.HuffmanOnly, gzip.BestCompression, errdefs.ErrInvalidArgument)
	}
	return nil
}

// gzipStreams writes eStargz's gzip streams at one level with one deflate.
// It holds no state of a layer, so one serves concurrent writers.
type gzipStreams struct {
	level  int
	whole  *sync.Pool // libdeflate compressors, when libdeflate writes the streams
	writer *sync.Pool // klauspost writers otherwise
}

// gzipWriterPools holds reusable klauspost gzip writers per level, and
// libdeflatePools libdeflate compressors: estargz opens a stream per file,
// and a level-9 writer costs about a megabyte to set up. Both are
// sync.Pools, emptied by the collections of an idle daemon (a libdeflate
// compressor's C memory is freed when it is collected).
var gzipWriterPools, libdeflatePools sync.Map // int -> *sync.Pool

func levelPool(pools *sync.Map, level int, make func() any) *sync.Pool {
	if p, ok := pools.Load(level); ok {
		return p.(*sync.Pool)
	}
	p, _ := pools.LoadOrStore(level, &sync.Pool{New: make})
	return p.(*sync.Pool)
}

func newGzipStreams(level int, deflate string) gzipStreams {
	if deflate == DeflateLibdeflate && libdeflate.Available && level != gzip.HuffmanOnly {
		if level == gzip.DefaultCompression {
			level = 6 // what gzip's default is
		}
		return gzipStreams{level: level, whole: levelPool(&libdeflatePools, level, func() any {
			c, err := libdeflate.New(level)
			if err != nil {
				panic(err) // the level was validated
			}
			return c
		})}
	}
	// klauspost; and libdeflate has no Huffman-only mode.
	return gzipStreams{level: level, writer: levelPool(&gzipWriterPools, level, func() any {
		w, _ := gzip.NewWriterLevel(io.Discard, level)
		return w
	})}
}

// Writer opens one stream into w.
func (g gzipStreams) Writer(w io.Writer) estargz.WriteFlushCloser {
	if g.whole != nil {
		return &wholeStream{g: g, w: w, buf: streamBuffer()}
	}
	gz := g.writer.Get().(*gzip.Writer)
	gz.Reset(w)
	return &pooledGzip{Writer: gz, pool: g.writer}
}

// compress writes src to dst as one stream; flushed says estargz flushed
// it before closing it (klauspost then writes a sync marker, as estargz's
// own gzip writer does).
func (g gzipStreams) compress(dst *bytes.Buffer, src []byte, flushed bool) error {
	if g.whole != nil {
		c := g.whole.Get().(*libdeflate.Compressor)
		out := c.AppendGzip(dst.AvailableBuffer(), src)
		g.whole.Put(c)
		_, err := dst.Write(out)
		return err
	}
	return writeStream(g.Writer(dst), src, flushed)
}

// streamBuffers are the buffers whole streams gather their input in (a
// chunk and the headers after it: about 4 MiB at most) and compress it to.
var streamBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// streamBuffer takes an empty buffer from streamBuffers.
func streamBuffer() *bytes.Buffer {
	b := streamBuffers.Get().(*bytes.Buffer)
	b.Reset()
	return b
}

// wholeStream gathers a stream and compresses it whole when closed.
type wholeStream struct {
	g   gzipStreams
	w   io.Writer
	buf *bytes.Buffer
}

func (s *wholeStream) Write(p []byte) (int, error) { return s.buf.Write(p) }

// Flush does nothing: a whole stream is compressed at once.
func (s *wholeStream) Flush() error { return nil }

func (s *wholeStream) Close() error {
	if s.buf == nil {
		return nil
	}
	out := streamBuffer()
	err := s.g.compress(out, s.buf.Bytes(), false)
	if err == nil {
		_, err = s.w.Write(out.Bytes())
	}
	streamBuffers.Put(s.buf)
	streamBuffers.Put(out)
	s.buf = nil
	return err
}

// pooledGzip is a klauspost stream whose writer goes back to its pool when closed.
type pooledGzip struct {
	*gzip.Writer
	pool *sync.Pool
}

func (p *pooledGzip) Close() error {
	err := p.Writer.Close()
	p.Writer.Reset(io.Discard)
	p.pool.Put(p.Writer)
	return err
}

// gzipCompressor is the sequential eStargz compressor: it writes the
// payload's gzip streams one after the other. parallelCompressor is its
// every-core twin.
type gzipCompressor struct{ streams gzipStreams }

func newGzipCompressor(streams gzipStreams) *gzipCompressor { return &gzipCompressor{streams: streams} }

// Writer opens one gzip stream of the payload.
func (c *gzipCompressor) Writer(w io.Writer) (estargz.WriteFlushCloser, error) {
	return c.streams.Writer(w), nil
}

// WriteTOCAndFooter writes the TOC (see writeGzipTOC).
func (c *gzipCompressor) WriteTOCAndFooter(w io.Writer, off int64, toc tocSource, diffHash hash.Hash) (digest.Digest, error) {
	return writeGzipTOC(w, off, c.streams, toc, diffHash)
}

// Annotations: eStargz has none beyond the common ones.
func (c *gzipCompressor) Annotations() map[string]string { return nil }

// buildCompression is estargz.Build's compression for optimized eStargz:
// the same streams as the lossless writer's (Build writes with several
// writers at once, which the stateless streams allow) and gzip decompression.
type buildCompression struct {
	estargz.GzipDecompressor
	streams gzipStreams
}

func (b buildCompression) Writer(w io.Writer) (estargz.WriteFlushCloser, error) {
	return b.streams.Writer(w), nil
}

func (b buildCompression) WriteTOCAndFooter(w io.Writer, off int64, toc *estargz.JTOC, diffHash hash.Hash) (digest.Digest, error) {
	return writeGzipTOC(w, off, b.streams, jtocSource{toc}, diffHash)
}
