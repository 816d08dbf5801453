package stargz

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"path"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"

	"github.com/lazyconv/lazyconv/internal/layerio"
)

// layoutWriter lays out a lossless eStargz or zstd:chunked layer: the
// layout of estargz.Writer's lossless path (AppendTarLossLess; the same
// bytes for the same compressor, which the tests check against estargz
// itself), with these differences:
//   - one parse: Go's tar reader (the one containerd unpacks with) reads the
//     tar through a rawTap, which keeps every byte it consumed until the
//     writer writes it: header bytes are what a header's parse consumed, and
//     file data must equal what its read consumed (a sparse file's would
//     not). So the payload is the source's tar byte for byte by
//     construction, the source's inspection takes the same headers in line
//     (no second parse beside it), and the payload is never hashed again:
//     the source's diffID hash is continued (Close);
//   - TOC entries go to an entrySpill as they are made, and the compressor
//     writes the TOC from it, instead of every entry staying on the heap;
//   - a compressed stream that has taken more than maxHeaderRun bytes of tar
//     headers since its last file data is closed and a new one opened, so a
//     run of many entries without data (directories, links, empty files)
//     never makes one huge stream for a whole-stream compressor to buffer.
//     Streams are only split between entries, never inside a chunk, so
//     every chunk still starts a stream at its TOC offset.
type layoutWriter struct {
	bw        *bufio.Writer
	cw        *countingWriter // bytes written, for the TOC offsets
	comp      tocCompressor
	stream    estargz.WriteFlushCloser // the open compressed stream, if any
	headerRun int64                    // header bytes in stream since its last file data
	written   int64                    // uncompressed bytes of the payload
	diffHash  countingHash             // the layer's uncompressed stream, once Close continues the payload's hash
	payload   digest.Digest
	chunkSize int64
	spill     *entrySpill
	unames    map[int]string // the last user name written per uid
	gnames    map[int]string
	copyBuf   []byte
}

// tarInspection takes the headers and trailing bytes of the tar the layout
// writer parses: the source's inspection, in line (layerio.Source.Inline).
type tarInspection interface {
	Entry(h *tar.Header) error
	Trailing(n int64) error
	EndOfArchive()
}

// errSparse stops a lossless layout at a sparse file, whose data Go's
// reader expands: no lossless format carries it (the source's inspection
// lists it, and the converter rewrites the layer).
var errSparse = errors.New("sparse file")

// maxHeaderRun bounds the tar header bytes one stream takes after its data.
const maxHeaderRun = 4 << 20

// defaultChunkSize is estargz's default chunk size.
const defaultChunkSize = 4 << 20

func newLayoutWriter(w io.Writer, comp tocCompressor, spill *entrySpill) *layoutWriter {
	bw := bufio.NewWriter(w)
	return &layoutWriter{
		bw: bw, cw: &countingWriter{w: bw}, comp: comp, chunkSize: defaultChunkSize,
		spill: spill, unames: map[int]string{}, gnames: map[int]string{},
	}
}

// SetChunkSize sets the largest run of a file's bytes in one stream (0:
// the default).
func (w *layoutWriter) SetChunkSize(n int) {
	w.chunkSize = defaultChunkSize
	if n > 0 {
		w.chunkSize = int64(n)
	}
}

// countingHash is a hash that counts what it is given.
type countingHash struct {
	hash.Hash
	n int64
}

func (c *countingHash) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return c.Hash.Write(p)
}

// Write writes uncompressed layer bytes into the current stream, opening
// one if needed.
func (w *layoutWriter) Write(p []byte) (int, error) {
	w.written += int64(len(p))
	if err := w.open(); err != nil {
		return 0, err
	}
	return w.stream.Write(p)
}

func (w *layoutWriter) open() (err error) {
	if w.stream == nil {
		w.stream, err = w.comp.Writer(w.cw)
		w.headerRun = 0
	}
	return err
}

func (w *layoutWriter) closeStream() error {
	if w.stream == nil {
		return nil
	}
	err := w.stream.Close()
	w.stream = nil
	return err
}

// writeHeaders writes raw tar header bytes, first closing a stream that
// has taken maxHeaderRun of them.
func (w *layoutWriter) writeHeaders(p []byte) error {
	if w.headerRun > maxHeaderRun {
		if err := w.closeStream(); err != nil {
			return err
		}
	}
	if err := w.open(); err != nil {
		return err
	}
	w.headerRun += int64(len(p))
	_, err := w.Write(p)
	return err
}

// AppendTarLossLess writes the tar stream r as the layer, byte for byte,
// handing each header to in (which may be nil: a stream inspected
// elsewhere). A sparse file stops it with errSparse, after the rest of the
// headers have been inspected.
func (w *layoutWriter) AppendTarLossLess(r io.Reader, in tarInspection) error {
	tap := &rawTap{r: r}
	tr := tar.NewReader(tap)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("error reading from source tar: tar.Reader.Next: %v", err)
		}
		if in != nil {
			if err := in.Entry(h); err != nil {
				return err
			}
		}
		if strings.TrimPrefix(path.Clean("/"+h.Name), "/") == estargz.TOCTarName {
			return errors.New("existing TOC JSON is not allowed; decompress layer before append")
		}
		if layerio.IsSparse(h) {
			return inspectRest(tr, in)
		}
		if err := w.writeHeaders(tap.take(len(tap.pending))); err != nil {
			return err
		}
		if err := w.appendEntry(tr, tap, h); err != nil {
			return err
		}
	}
	if err := w.writeHeaders(tap.take(len(tap.pending))); err != nil { // the end-of-archive blocks
		return err
	}
	if in != nil {
		in.EndOfArchive()
	}
	// And whatever follows them, within the inspection's limit.
	buf := w.buffer()
	for trailing := int64(0); ; {
		n, err := r.Read(buf)
		if n > 0 {
			trailing += int64(n)
			if in != nil {
				if err := in.Trailing(trailing); err != nil {
					return err
				}
			}
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// inspectRest hands the inspection the headers after a sparse file, so that
// its verdict covers the whole tar, and returns errSparse.
func inspectRest(tr *tar.Reader, in tarInspection) error {
	for in != nil {
		h, err := tr.Next()
		if err == io.EOF {
			in.EndOfArchive()
			break
		}
		if err != nil {
			return fmt.Errorf("error reading from source tar: tar.Reader.Next: %v", err)
		}
		if err := in.Entry(h); err != nil {
			return err
		}
	}
	return errSparse
}

// rawTap is the tar reader's source: it keeps what the reader consumed
// until the layout writer takes it. While a file's data is read (direct),
// it keeps no copy but the place it read into: the data the tar reader
// returns must be those very bytes (see tapData).
type rawTap struct {
	r       io.Reader
	pending []byte
	direct  bool
	last    []byte // what the last direct read filled
	reads   int    // direct reads since the tapData read began
}

func (t *rawTap) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if t.direct {
		t.last, t.reads = p[:n], t.reads+1
		return n, err
	}
	t.pending = append(t.pending, p[:n]...)
	return n, err
}

// take removes and returns the first n pending bytes (valid until the next
// Read).
func (t *rawTap) take(n int) []byte {
	if n == len(t.pending) {
		out := t.pending
		t.pending = t.pending[:0]
		return out
	}
	out := append([]byte(nil), t.pending[:n]...)
	t.pending = t.pending[:copy(t.pending, t.pending[n:])]
	return out
}

func (w *layoutWriter) buffer() []byte {
	if w.copyBuf == nil {
		w.copyBuf = make([]byte, 32<<10)
	}
	return w.copyBuf
}

// appendEntry records the entry h and writes its file data (tr's).
func (w *layoutWriter) appendEntry(tr *tar.Reader, tap *rawTap, h *tar.Header) error {
	ent, err := tocEntryOf(h, w.unames, w.gnames)
	if err != nil {
		return err
	}
	if h.Typeflag != tar.TypeReg {
		_, err := w.spill.Append(&ent, nil, false)
		return err
	}
	if ent.Size == 0 {
		slot, err := w.spill.Append(&ent, nil, true)
		if err != nil {
			return err
		}
		return w.spill.Patch(slot, emptySHA256[:])
	}
	return w.appendData(&tapData{tr: tr, tap: tap}, &ent)
}

// tapData reads a regular file's data from the tar reader and checks that
// it is what the tap consumed for it, in the same memory: one read of the
// source into p, returned whole. So a file's data is in the payload exactly
// as it is in the source, with no copy to compare; a reader that made the
// data up (a sparse file's holes) or copied it fails the check, closed.
type tapData struct {
	tr  *tar.Reader
	tap *rawTap
}

func (d *tapData) Read(p []byte) (int, error) {
	if len(d.tap.pending) > 0 { // cannot happen: the header took them
		return 0, fmt.Errorf("tar reader consumed %d bytes before a file's data: %w", len(d.tap.pending), errdefs.ErrInvalidArgument)
	}
	d.tap.direct, d.tap.last, d.tap.reads = true, nil, 0
	n, err := d.tr.Read(p)
	d.tap.direct = false
	if n > 0 && (d.tap.reads != 1 || len(d.tap.last) != n || &d.tap.last[0] != &p[0]) {
		return 0, fmt.Errorf("a file's data is not the tar's bytes: %w", errdefs.ErrInvalidArgument)
	}
	return n, err
}

var emptySHA256 = sha256.Sum256(nil)

// appendData writes a regular file's data, a stream per chunk. The first
// chunk's fields are the reg entry's own; each further chunk is a "chunk"
// entry. The digest of the whole file is patched into the reg entry last.
func (w *layoutWriter) appendData(src io.Reader, ent *estargz.TOCEntry) error {
	slot, total := int64(-1), ent.Size
	chunk := sha256.New()
	var sum [sha256.Size]byte
	// A file of one chunk (most files) is hashed once: its chunk's digest is
	// its digest.
	var file hash.Hash
	if total > w.chunkSize {
		file = sha256.New()
	}
	buf := w.buffer()
	for written := int64(0); written < total; {
		size := w.chunkSize
		if remain := total - written; remain < size {
			size = remain
		} else {
			ent.ChunkSize = size
		}
		if w.stream != nil { // estargz flushes before it takes the offset
			if err := w.stream.Flush(); err != nil {
				return err
			}
		}
		if err := w.closeStream(); err != nil {
			return err
		}
		ent.Offset = w.cw.n
		ent.ChunkOffset = written
		if err := w.open(); err != nil {
			return err
		}
		chunk.Reset()
		for left := size; left > 0; {
			n, err := src.Read(buf[:min(left, int64(len(buf)))])
			if n > 0 {
				chunk.Write(buf[:n])
				if file != nil {
					file.Write(buf[:n])
				}
				if _, werr := w.Write(buf[:n]); werr != nil {
					return werr
				}
				left -= int64(n)
			}
			if left > 0 && err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			if err != nil && (left > 0 || err != io.EOF) {
				return fmt.Errorf("error copying %q: %w", ent.Name, err)
			}
		}
		n, err := w.spill.Append(ent, chunk.Sum(sum[:0]), slot < 0)
		if err != nil {
			return err
		}
		if slot < 0 {
			slot = n
		}
		written += size
		*ent = estargz.TOCEntry{Name: ent.Name, Type: "chunk"}
	}
	if file != nil {
		return w.spill.Patch(slot, file.Sum(sum[:0]))
	}
	return w.spill.Patch(slot, sum[:])
}

// tocEntryOf is the TOC entry estargz's lossless writer records for the
// tar header h, before any data offsets and digests: unames and gnames hold
// the last user and group name recorded per id (a name is written only when
// it changes). The verification of layers made elsewhere rebuilds entries
// through it too, so that both agree on what a header becomes.
func tocEntryOf(h *tar.Header, unames, gnames map[int]string) (estargz.TOCEntry, error) {
	ent := estargz.TOCEntry{
		Name: h.Name, Mode: h.Mode, UID: h.Uid, GID: h.Gid,
		Uname: nameIfChanged(unames, h.Uid, h.Uname), Gname: nameIfChanged(gnames, h.Gid, h.Gname),
		ModTime3339: formatModTime(h),
	}
	const xattrPrefix = "SCHILY.xattr."
	for k, v := range h.PAXRecords {
		if name, ok := strings.CutPrefix(k, xattrPrefix); ok {
			if ent.Xattrs == nil {
				ent.Xattrs = map[string][]byte{}
			}
			ent.Xattrs[name] = []byte(v)
		}
	}
	switch h.Typeflag {
	case tar.TypeLink:
		ent.Type, ent.LinkName = "hardlink", h.Linkname
	case tar.TypeSymlink:
		ent.Type, ent.LinkName = "symlink", h.Linkname
	case tar.TypeDir:
		ent.Type = "dir"
	case tar.TypeReg:
		ent.Type, ent.Size = "reg", h.Size
	case tar.TypeChar, tar.TypeBlock:
		ent.Type, ent.DevMajor, ent.DevMinor = "char", int(h.Devmajor), int(h.Devminor)
		if h.Typeflag == tar.TypeBlock {
			ent.Type = "block"
		}
	case tar.TypeFifo:
		ent.Type = "fifo"
	default:
		return ent, fmt.Errorf("unsupported input tar entry %q", h.Typeflag)
	}
	return ent, nil
}

// nameIfChanged returns name unless it already was the last name of id.
func nameIfChanged(last map[int]string, id int, name string) string {
	if name == "" || last[id] == name {
		return ""
	}
	last[id] = name
	return name
}

// formatModTime is estargz's: RFC 3339 in UTC to the second, empty for the
// zero time and the epoch.
func formatModTime(h *tar.Header) string {
	t := h.ModTime
	if t.IsZero() || t.Unix() == 0 {
		return ""
	}
	return t.UTC().Round(1e9).Format("2006-01-02T15:04:05Z07:00")
}

// Close writes the TOC and footer (through the compressor) and flushes.
// payload is the hash of the payload (the source's diffID hash, continued:
// the payload is the tar the layout parsed, byte for byte), which takes any
// bytes the TOC adds to the uncompressed layer.
func (w *layoutWriter) Close(payload hash.Hash) (digest.Digest, error) {
	if err := w.closeStream(); err != nil {
		return "", err
	}
	w.payload = digest.NewDigestFromBytes(digest.SHA256, payload.Sum(nil))
	w.diffHash = countingHash{Hash: payload, n: w.written}
	d, err := w.comp.WriteTOCAndFooter(w.cw, w.cw.n, w.spill, &w.diffHash)
	if err != nil {
		return "", err
	}
	return d, w.bw.Flush()
}

// PayloadDigest is the digest of the payload, every uncompressed byte
// before the TOC: for a lossless layer, the source's diffID. Valid after
// Close.
func (w *layoutWriter) PayloadDigest() digest.Digest { return w.payload }

// PayloadSize is the payload's size in bytes.
func (w *layoutWriter) PayloadSize() int64 { return w.written }

// UncompressedSize is the size of the layer's uncompressed stream (with an
// eStargz TOC's tar entry; zstd:chunked's TOC is outside it). Valid after
// Close.
func (w *layoutWriter) UncompressedSize() int64 { return w.diffHash.n }

// DiffID is the digest of the uncompressed layer, TOC entry included.
func (w *layoutWriter) DiffID() digest.Digest {
	return digest.NewDigestFromBytes(digest.SHA256, w.diffHash.Sum(nil))
}
