package stargz

import (
	"bytes"
	"fmt"
	"hash"
	"io"
	"runtime"
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

// DeflateDescription names the deflate this build uses by default, with
// libdeflate's version: what `lazyconv version` and Capabilities report.
func DeflateDescription() string {
	if libdeflate.Available {
		return "libdeflate " + libdeflate.Version
	}
	return "klauspost/compress"
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
	whole  *deflaters // libdeflate compressors, when libdeflate writes the streams
	writer *sync.Pool // klauspost writers otherwise
}

// deflaters keeps libdeflate compressors of one level for reuse: a bounded
// free list, not a sync.Pool. A compressor is C memory; a sync.Pool drops
// its contents at every collection, and a conversion's small Go heap is
// collected every few milliseconds, so compressors were allocated and freed
// by the thousand, and the C allocator's per-thread arenas kept the pages
// (130-320 MB of RSS for a Go heap of 7 MB). Kept ones live as long as the
// process: a few, a few hundred KiB each.
type deflaters struct {
	level int
	free  chan *libdeflate.Compressor
}

func (d *deflaters) get() *libdeflate.Compressor {
	select {
	case c := <-d.free:
		return c
	default:
		c, err := libdeflate.New(d.level)
		if err != nil {
			panic(err) // the level was validated
		}
		return c
	}
}

func (d *deflaters) put(c *libdeflate.Compressor) {
	select {
	case d.free <- c:
	default: // enough kept: this one is freed once collected
	}
}

// gzipWriterPools holds reusable klauspost gzip writers per level (a
// level-9 writer costs about a megabyte to set up, and estargz opens a
// stream per file), emptied by the collections of an idle daemon;
// libdeflatePools holds the deflaters per level.
var gzipWriterPools, libdeflatePools sync.Map // int -> *sync.Pool, *deflaters

func newGzipStreams(level int, deflate string) gzipStreams {
	if deflate == DeflateLibdeflate && libdeflate.Available && level != gzip.HuffmanOnly {
		if level == gzip.DefaultCompression {
			level = 6 // what gzip's default is
		}
		d, _ := libdeflatePools.LoadOrStore(level, &deflaters{level: level, free: make(chan *libdeflate.Compressor, 2*runtime.GOMAXPROCS(0))})
		return gzipStreams{level: level, whole: d.(*deflaters)}
	}
	// klauspost; and libdeflate has no Huffman-only mode.
	p, _ := gzipWriterPools.LoadOrStore(level, &sync.Pool{New: func() any {
		w, _ := gzip.NewWriterLevel(io.Discard, level)
		return w
	}})
	return gzipStreams{level: level, writer: p.(*sync.Pool)}
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

// tocLevel is the level of the TOC's stream, which klauspost writes (it is
// streamed, never held whole; libdeflate's -1 is 6, as gzip's).
func (g gzipStreams) tocLevel() int { return min(g.level, gzip.BestCompression) }

// compress writes src to dst as one stream; flushed says estargz flushed
// it before closing it (klauspost then writes a sync marker, as estargz's
// own gzip writer does).
func (g gzipStreams) compress(dst *bytes.Buffer, src []byte, flushed bool) error {
	if g.whole != nil {
		c := g.whole.get()
		dst.Grow(c.GzipBound(len(src))) // compressed in place: no second buffer
		out := c.AppendGzip(dst.AvailableBuffer(), src)
		g.whole.put(c)
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
