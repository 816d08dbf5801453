//go:build cgo

package soci

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/awslabs/soci-snapshotter/ztoc"
	"github.com/awslabs/soci-snapshotter/ztoc/compression"
	"github.com/containerd/errdefs"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/internal/layerio"
)

// tarTable parses the tar r once with Go's tar reader, checking each header
// as it comes (check: paths, the limits, then the bytes after the
// end-of-archive marker), and returns its file table as soci's TOC builder
// makes it (ztoc's metadataFromTarReader: an entry's data starts where the
// reader stands after its headers, its headers where the previous entry's
// data ends, rounded up to a tar block) and the tar's size as soci counts
// it (to the end-of-archive marker). Verification compares it with soci's
// own builder (VerifyZTOC), and TestZTOCsAndIndexAreSoci with soci's output.
func tarTable(r io.Reader, check *layerio.Check, maxBytes int64) (ztoc.TOC, compression.Offset, error) {
	var pos atomic.Int64 // where the reader stands in the tar
	pt := &layerio.CountingReader{R: r, N: &pos}
	tr := tar.NewReader(pt)
	var md []ztoc.FileMetadata
	var headerAt, held int64
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return ztoc.TOC{}, 0, fmt.Errorf("not a valid tar after %d entries: %w: %w", len(md), err, errdefs.ErrInvalidArgument)
		}
		if err := check.Entry(h); err != nil {
			return ztoc.TOC{}, 0, err
		}
		if layerio.IsSparse(h) {
			return ztoc.TOC{}, 0, fmt.Errorf("entry %q: %w", h.Name, errSparse)
		}
		held += entryBytes(h)
		if converter.Exceeds(held, maxBytes) {
			return ztoc.TOC{}, 0, fmt.Errorf("the layer's file table passes %d bytes at entry %q (the limit; raise max_toc_bytes to index it): %w",
				maxBytes, h.Name, errdefs.ErrInvalidArgument)
		}
		typ, ok := fileTypes[h.Typeflag]
		if !ok {
			return ztoc.TOC{}, 0, fmt.Errorf("entry %q has tar type %q, which soci does not index: %w", h.Name, h.Typeflag, errdefs.ErrInvalidArgument)
		}
		e := ztoc.FileMetadata{Name: h.Name, Type: typ, UncompressedOffset: compression.Offset(pos.Load()), UncompressedSize: compression.Offset(h.Size),
			TarHeaderOffset: compression.Offset(headerAt), Linkname: h.Linkname, Mode: h.Mode, UID: h.Uid, GID: h.Gid, Uname: h.Uname,
			Gname: h.Gname, ModTime: h.ModTime, Devmajor: h.Devmajor, Devminor: h.Devminor, PAXHeaders: h.PAXRecords}
		md = append(md, e)
		headerAt = int64(ztoc.AlignToTarBlock(e.UncompressedOffset + e.UncompressedSize))
	}
	size := pos.Load()
	limit := check.MaxTrailing()
	var trailing int64
	var err error
	if limit < 0 {
		trailing, err = io.Copy(io.Discard, pt)
	} else {
		trailing, err = io.CopyN(io.Discard, pt, limit)
		if errors.Is(err, io.EOF) {
			err = nil
		}
	}
	if err != nil {
		return ztoc.TOC{}, 0, err
	}
	if err := check.Trailing(trailing); err != nil {
		return ztoc.TOC{}, 0, err
	}
	return ztoc.TOC{FileMetadata: md}, compression.Offset(size), nil
}

// errSparse is a layer with a sparse file: soci's file table gives such a
// file's packed data in the tar as its contents (its holes, and what
// follows, would be served in their place), so the layer gets no zTOC and
// is fetched whole.
var errSparse = fmt.Errorf("a sparse file, which soci-snapshotter would serve as its packed tar data: %w", errdefs.ErrInvalidArgument)

// entryBytes is what an entry's strings hold in a file table (the rest of
// an entry is of fixed size, bounded with the entries by max_entries).
func entryBytes(h *tar.Header) int64 {
	n := int64(len(h.Name) + len(h.Linkname) + len(h.Uname) + len(h.Gname))
	for k, v := range h.PAXRecords {
		n += int64(len(k) + len(v))
	}
	return n
}

// fileTypes are the tar types soci's TOC builder indexes, by its names.
var fileTypes = map[byte]string{
	tar.TypeLink: "hardlink", tar.TypeSymlink: "symlink", tar.TypeDir: "dir", tar.TypeReg: "reg",
	tar.TypeChar: "char", tar.TypeBlock: "block", tar.TypeFifo: "fifo",
}
