package stargz

import (
	"archive/tar"
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"os"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
)

// tocSource is a layer's TOC entries, read in order one at a time (an
// entrySpill, or a JTOC for estargz.Build's writer), and scratch files to
// spool the TOC through.
type tocSource interface {
	// Entries calls fn for every entry in order; the entry is reused
	// after fn returns.
	Entries(fn func(*estargz.TOCEntry) error) error
	// Spool returns an empty scratch file, already unlinked.
	Spool() (*os.File, error)
}

// jtocSource is an in-memory TOC (estargz.Build's) as a tocSource.
type jtocSource struct{ toc *estargz.JTOC }

func (j jtocSource) Entries(fn func(*estargz.TOCEntry) error) error {
	for _, e := range j.toc.Entries {
		if err := fn(e); err != nil {
			return err
		}
	}
	return nil
}

func (j jtocSource) Spool() (*os.File, error) { return scratchFile("") }

// scratchFile creates an unlinked temporary file in dir ("" for the system's).
func scratchFile(dir string) (*os.File, error) {
	f, err := os.CreateTemp(dir, "lazyconv-toc-*")
	if err != nil {
		return nil, fmt.Errorf("creating a TOC scratch file: %w", err)
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fmt.Errorf("unlinking a TOC scratch file: %w", err)
	}
	return f, nil
}

// tocJSONStyle is how a TOC's JSON is laid out: compact (lazyconv's eStargz)
// or indented with tabs (what zstd:chunked readers' writer, estargz's
// json.MarshalIndent, writes).
type tocJSONStyle bool

const (
	compactJSON  tocJSONStyle = false
	indentedJSON tocJSONStyle = true
)

// writeTOCJSON writes the TOC's JSON, one entry at a time, and returns the
// bytes written. It is byte for byte what encoding/json writes for the
// whole JTOC (json.Marshal or json.MarshalIndent(toc, "", "\t")).
func writeTOCJSON(w io.Writer, toc tocSource, style tocJSONStyle) (int64, error) {
	cw := &countingWriter{w: w}
	bw := bufio.NewWriterSize(cw, 64<<10)
	var (
		entries int
		b       []byte
		err     error
	)
	head, sep, tail := `{"version":1,"entries":[`, ",", "]}"
	if style == indentedJSON {
		head, sep, tail = "{\n\t\"version\": 1,\n\t\"entries\": [\n\t\t", ",\n\t\t", "\n\t]\n}"
	}
	if err := toc.Entries(func(e *estargz.TOCEntry) error {
		if entries == 0 {
			bw.WriteString(head)
		} else {
			bw.WriteString(sep)
		}
		entries++
		if style == indentedJSON {
			b, err = json.MarshalIndent(e, "\t\t", "\t")
		} else {
			b, err = json.Marshal(e)
		}
		_, _ = bw.Write(b)
		return err
	}); err != nil {
		return 0, err
	}
	switch {
	case entries > 0:
		bw.WriteString(tail)
	case style == indentedJSON: // a JTOC with no entries has a nil list
		bw.WriteString("{\n\t\"version\": 1,\n\t\"entries\": null\n}")
	default:
		bw.WriteString(`{"version":1,"entries":[]}`)
	}
	if err := bw.Flush(); err != nil {
		return 0, err
	}
	return cw.n, nil
}

// spoolTOCJSON writes the TOC's JSON (through wrap, e.g. a compressor) to a
// scratch file, and returns the file, the JSON's size and digest. The
// caller closes the file.
func spoolTOCJSON(toc tocSource, style tocJSONStyle, wrap func(io.Writer) (io.WriteCloser, error)) (*os.File, int64, digest.Digest, error) {
	f, err := toc.Spool()
	if err != nil {
		return nil, 0, "", err
	}
	fail := func(err error) (*os.File, int64, digest.Digest, error) { f.Close(); return nil, 0, "", err }
	bw := bufio.NewWriterSize(f, 64<<10)
	var out io.WriteCloser = nopCloser{bw}
	if wrap != nil {
		if out, err = wrap(bw); err != nil {
			return fail(err)
		}
	}
	dg := digest.SHA256.Digester()
	size, err := writeTOCJSON(io.MultiWriter(out, dg.Hash()), toc, style)
	if err != nil {
		return fail(err)
	}
	if err := out.Close(); err != nil {
		return fail(err)
	}
	if err := bw.Flush(); err != nil {
		return fail(err)
	}
	return f, size, dg.Digest(), nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// writeGzipTOC writes the eStargz TOC at offset off: a tar entry named
// stargz.index.json in one gzip stream of its own (one member: estargz reads
// the TOC with Multistream(false)), streamed through klauspost's writer at
// the layer's level, then the footer pointing at it.
// The TOC's tar entry is part of the layer's uncompressed stream, which
// diffHash takes (if not nil). It returns the TOC digest.
func writeGzipTOC(w io.Writer, off int64, streams gzipStreams, toc tocSource, diffHash hash.Hash) (digest.Digest, error) {
	f, size, tocDigest, err := spoolTOCJSON(toc, compactJSON, nil)
	if err != nil {
		return "", err
	}
	defer f.Close()
	gz, err := gzip.NewWriterLevel(w, streams.tocLevel())
	if err != nil {
		return "", err
	}
	var tocBytes io.Writer = gz
	if diffHash != nil { // estargz.Build passes none
		tocBytes = io.MultiWriter(gz, diffHash)
	}
	tw := tar.NewWriter(tocBytes)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: estargz.TOCTarName, Size: size}); err != nil {
		return "", err
	}
	if _, err := io.Copy(tw, io.NewSectionReader(f, 0, size)); err != nil {
		return "", err
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	if err := gz.Close(); err != nil {
		return "", err
	}
	if _, err := w.Write(gzipFooter(off)); err != nil {
		return "", err
	}
	return tocDigest, nil
}

// gzipFooter is estargz's footer: an empty gzip stream whose extra field
// holds the TOC offset ("%016xSTARGZ", RFC 1952 subfield "SG").
func gzipFooter(tocOffset int64) []byte {
	subfield := fmt.Sprintf("%016xSTARGZ", tocOffset)
	extra := []byte{'S', 'G', 0, 0}
	binary.LittleEndian.PutUint16(extra[2:], uint16(len(subfield)))
	return estargz.CreateGzipFooter(append(extra, subfield...))
}

// zstd:chunked's layout (containers/storage's, as estargz/zstdchunked writes
// it): the TOC is indented JSON, zstd-compressed, in a skippable frame
// (magic, little-endian uint32 length); then a skippable frame holding the
// 40-byte footer: TOC offset, compressed size, uncompressed size, manifest
// type (1, CRFS), then the 8-byte zstd:chunked magic.
var (
	zstdSkippableFrameMagic = []byte{0x50, 0x2a, 0x4d, 0x18}
	zstdChunkedFooterMagic  = []byte{0x47, 0x6e, 0x55, 0x6c, 0x49, 0x6e, 0x55, 0x78}
)

const zstdManifestTypeCRFS = 1

// writeZstdTOC writes the zstd:chunked TOC and footer at offset off, and
// returns the TOC digest and the manifest annotations.
func writeZstdTOC(w io.Writer, off int64, level zstd.EncoderLevel, toc tocSource) (digest.Digest, map[string]string, error) {
	compressed := digest.SHA256.Digester()
	f, size, tocDigest, err := spoolTOCJSON(toc, indentedJSON, func(w io.Writer) (io.WriteCloser, error) {
		return zstd.NewWriter(io.MultiWriter(w, compressed.Hash()), zstd.WithEncoderLevel(level))
	})
	if err != nil {
		return "", nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", nil, err
	}
	csize := st.Size()
	if csize > 1<<32-1 {
		return "", nil, fmt.Errorf("zstd:chunked TOC of %d bytes does not fit a skippable frame", csize)
	}
	if _, err := w.Write(skippableFrameHeader(uint32(csize))); err != nil {
		return "", nil, err
	}
	if _, err := io.Copy(w, io.NewSectionReader(f, 0, csize)); err != nil {
		return "", nil, err
	}
	tocOff := off + 8 // past the skippable frame's header
	footer := make([]byte, zstdchunked.FooterSize)
	binary.LittleEndian.PutUint64(footer, uint64(tocOff))
	binary.LittleEndian.PutUint64(footer[8:], uint64(csize))
	binary.LittleEndian.PutUint64(footer[16:], uint64(size))
	binary.LittleEndian.PutUint64(footer[24:], zstdManifestTypeCRFS)
	copy(footer[32:], zstdChunkedFooterMagic)
	if _, err := w.Write(append(skippableFrameHeader(uint32(len(footer))), footer...)); err != nil {
		return "", nil, err
	}
	return tocDigest, map[string]string{
		zstdchunked.ManifestChecksumAnnotation: compressed.Digest().String(),
		zstdchunked.ManifestPositionAnnotation: fmt.Sprintf("%d:%d:%d:%d", tocOff, csize, size, zstdManifestTypeCRFS),
	}, nil
}

func skippableFrameHeader(size uint32) []byte {
	return binary.LittleEndian.AppendUint32(append([]byte(nil), zstdSkippableFrameMagic...), size)
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
