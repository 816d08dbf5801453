package converter

import (
	"archive/tar"
	"bufio"
	"encoding/binary"
	"encoding/json"
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
// streams with pooled klauspost writers, one after the other, and hashes
// every uncompressed byte it is given (see payloadHash).
type payloadCompressor struct {
	payloadHash
	level   int
	pool    *sync.Pool
	tocSize int64 // uncompressed bytes of the TOC's tar entry
}

func newPayloadCompressor(level int) *payloadCompressor {
	return &payloadCompressor{payloadHash: newPayloadHash(), level: level, pool: gzipWriterPool(level)}
}

// Writer opens one gzip stream of the payload.
func (c *payloadCompressor) Writer(w io.Writer) (estargz.WriteFlushCloser, error) {
	return &hashingWriter{WriteFlushCloser: openPooledGzip(c.pool, w), p: &c.payloadHash}, nil
}

// WriteTOCAndFooter writes the TOC as estargz's gzip compressor does (a tar
// entry named stargz.index.json in its own gzip stream, then the footer
// pointing at it), but streams the JSON entry by entry instead of building it
// whole: estargz's MarshalIndent holds two copies of a TOC that is tens of
// megabytes for a layer of many files. The JSON is compact, not indented.
func (c *payloadCompressor) WriteTOCAndFooter(w io.Writer, off int64, toc *estargz.JTOC, diffHash hash.Hash) (digest.Digest, error) {
	d, n, err := writeGzipTOC(w, off, c.level, toc, diffHash)
	c.tocSize = n
	return d, err
}

// writeGzipTOC writes the TOC's gzip stream at offset off and the footer,
// and returns the TOC digest and the TOC tar entry's uncompressed size.
func writeGzipTOC(w io.Writer, off int64, level int, toc *estargz.JTOC, diffHash hash.Hash) (digest.Digest, int64, error) {
	size, err := writeTOCJSON(io.Discard, toc)
	if err != nil {
		return "", 0, err
	}
	gz, err := gzip.NewWriterLevel(w, level)
	if err != nil {
		return "", 0, err
	}
	counted := &countingWriter{w: gz}
	tw := tar.NewWriter(io.MultiWriter(counted, diffHash))
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: estargz.TOCTarName, Size: size}); err != nil {
		return "", 0, err
	}
	dg := digest.SHA256.Digester()
	if _, err := writeTOCJSON(io.MultiWriter(tw, dg.Hash()), toc); err != nil {
		return "", 0, err
	}
	if err := tw.Close(); err != nil {
		return "", 0, err
	}
	if err := gz.Close(); err != nil {
		return "", 0, err
	}
	if _, err := w.Write(gzipFooter(off)); err != nil {
		return "", 0, err
	}
	return dg.Digest(), counted.n, nil
}

// writeTOCJSON writes toc as compact JSON, one entry at a time, and returns
// the bytes written.
func writeTOCJSON(w io.Writer, toc *estargz.JTOC) (int64, error) {
	cw := &countingWriter{w: w}
	bw := bufio.NewWriterSize(cw, 64<<10)
	fmt.Fprintf(bw, `{"version":%d,"entries":[`, toc.Version)
	for i, e := range toc.Entries {
		if i > 0 {
			bw.WriteByte(',')
		}
		b, err := json.Marshal(e)
		if err != nil {
			return 0, err
		}
		bw.Write(b)
	}
	bw.WriteString("]}")
	if err := bw.Flush(); err != nil {
		return 0, err
	}
	return cw.n, nil
}

// gzipFooter is estargz's footer: an empty gzip stream whose extra field
// holds the TOC offset ("%016xSTARGZ", RFC 1952 subfield "SG").
func gzipFooter(tocOffset int64) []byte {
	subfield := fmt.Sprintf("%016xSTARGZ", tocOffset)
	extra := []byte{'S', 'G', 0, 0}
	binary.LittleEndian.PutUint16(extra[2:], uint16(len(subfield)))
	return estargz.CreateGzipFooter(append(extra, subfield...))
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// UncompressedSize is the payload and the TOC's tar entry: eStargz's TOC is
// part of the layer's tar stream.
func (c *payloadCompressor) UncompressedSize() int64 { return c.size + c.tocSize }

// Annotations: eStargz has none beyond the common ones.
func (c *payloadCompressor) Annotations() map[string]string { return nil }

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
