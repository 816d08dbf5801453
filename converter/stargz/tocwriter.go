package stargz

import (
	"archive/tar"
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash"
	"io"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
)

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
