package stargz

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
)

// entrySpill keeps the TOC entries of a layer being written in a temporary
// file, so that a layer's memory does not grow with its number of entries:
// estargz's writer holds every entry (hundreds of bytes each) until the TOC
// is written. Entries are appended in compact binary records and read back
// in order when the TOC is written. The file is unlinked as soon as it is
// created, so nothing is left behind by a crash.
type entrySpill struct {
	f     *os.File
	dir   string
	buf   []byte // records not yet written to f
	base  int64  // f's offset of buf[0]
	count int
	rec   []byte // scratch for one record
}

// spillBufferSize is the write buffer of a spill (and its read buffer).
const spillBufferSize = 64 << 10

func newEntrySpill(dir string) (*entrySpill, error) {
	f, err := scratchFile(dir)
	if err != nil {
		return nil, err
	}
	return &entrySpill{f: f, dir: dir, buf: make([]byte, 0, spillBufferSize)}, nil
}

// Spool returns another scratch file beside the spill.
func (s *entrySpill) Spool() (*os.File, error) { return scratchFile(s.dir) }

// Close releases the file (and with it the disk space).
func (s *entrySpill) Close() error { return s.f.Close() }

// Len is the number of entries appended.
func (s *entrySpill) Len() int { return s.count }

// Record flags: which optional parts a record has.
const (
	recHeader      = 1 << iota // a tar entry's own fields (not a chunk)
	recData                    // offset, chunk offset and size, chunk digest
	recDigest                  // the whole file's digest (a slot of 32 bytes)
	recInnerOffset             // a non-zero inner offset
)

var entryTypes = []string{"dir", "reg", "symlink", "hardlink", "char", "block", "fifo", "chunk"}

// Append adds e, with chunk (if not nil) the raw sha256 of its chunk, and
// returns the position of its digest slot (-1 if it has none), for Patch
// once the file's digest is known.
func (s *entrySpill) Append(e *estargz.TOCEntry, chunk []byte, hasDigest bool) (int64, error) {
	typ := slices.Index(entryTypes, e.Type)
	if typ < 0 {
		return 0, fmt.Errorf("TOC entry %q: unknown type %q", e.Name, e.Type)
	}
	var flags byte
	if e.Type != "chunk" {
		flags |= recHeader
	}
	if chunk != nil {
		if len(chunk) != sha256Size {
			return 0, fmt.Errorf("TOC entry %q: chunk digest of %d bytes", e.Name, len(chunk))
		}
		flags |= recData
	}
	if hasDigest {
		flags |= recDigest
	}
	if e.InnerOffset != 0 {
		flags |= recInnerOffset
	}
	r := append(s.rec[:0], byte(typ), flags)
	r = appendString(r, e.Name)
	if flags&recHeader != 0 {
		r = binary.AppendVarint(r, e.Mode)
		r = binary.AppendVarint(r, int64(e.UID))
		r = binary.AppendVarint(r, int64(e.GID))
		r = appendString(r, e.Uname)
		r = appendString(r, e.Gname)
		r = appendString(r, e.ModTime3339)
		r = appendString(r, e.LinkName)
		r = binary.AppendVarint(r, e.Size)
		r = binary.AppendVarint(r, int64(e.DevMajor))
		r = binary.AppendVarint(r, int64(e.DevMinor))
		r = binary.AppendUvarint(r, uint64(len(e.Xattrs)))
		for k, v := range e.Xattrs { // JSON sorts the keys; order here is free
			r = appendString(r, k)
			r = appendString(r, string(v))
		}
	}
	if flags&recData != 0 {
		r = binary.AppendVarint(r, e.Offset)
		r = binary.AppendVarint(r, e.ChunkOffset)
		r = binary.AppendVarint(r, e.ChunkSize)
		r = append(r, chunk...)
	}
	if flags&recInnerOffset != 0 {
		r = binary.AppendVarint(r, e.InnerOffset)
	}
	slot := int64(-1)
	if flags&recDigest != 0 {
		r = append(r, make([]byte, sha256Size)...)
	}
	s.rec = r
	var size [binary.MaxVarintLen64]byte
	prefix := size[:binary.PutUvarint(size[:], uint64(len(r)))]
	end := s.base + int64(len(s.buf)) + int64(len(prefix)) + int64(len(r)) // where the record ends in the file
	if flags&recDigest != 0 {
		slot = end - sha256Size
	}
	if err := s.write(prefix); err != nil {
		return 0, err
	}
	if err := s.write(r); err != nil {
		return 0, err
	}
	s.count++
	return slot, nil
}

const sha256Size = 32

// Patch writes a file's raw sha256 into the slot Append returned.
func (s *entrySpill) Patch(slot int64, raw []byte) error {
	if len(raw) != sha256Size {
		return fmt.Errorf("a file digest of %d bytes", len(raw))
	}
	if slot >= s.base {
		copy(s.buf[slot-s.base:], raw)
		return nil
	}
	if end := slot + sha256Size; end > s.base { // straddles what was written and the buffer
		n := s.base - slot
		copy(s.buf, raw[n:])
		raw = raw[:n]
	}
	_, err := s.f.WriteAt(raw, slot)
	return err
}

func (s *entrySpill) write(p []byte) error {
	if len(s.buf)+len(p) > cap(s.buf) {
		if err := s.flush(); err != nil {
			return err
		}
	}
	if len(p) > cap(s.buf) {
		n, err := s.f.WriteAt(p, s.base)
		s.base += int64(n)
		return err
	}
	s.buf = append(s.buf, p...)
	return nil
}

func (s *entrySpill) flush() error {
	n, err := s.f.WriteAt(s.buf, s.base)
	s.base += int64(n)
	s.buf = s.buf[:0]
	return err
}

// Entries reads the entries back in order (see tocEntries).
func (s *entrySpill) Entries(fn func(*estargz.TOCEntry) error) error {
	if err := s.flush(); err != nil {
		return err
	}
	br := bufio.NewReaderSize(io.NewSectionReader(s.f, 0, s.base), spillBufferSize)
	var (
		e   estargz.TOCEntry
		rec []byte
	)
	for range s.count {
		n, err := binary.ReadUvarint(br)
		if err != nil {
			return fmt.Errorf("reading TOC spill: %w", err)
		}
		rec = slices.Grow(rec[:0], int(n))[:n]
		if _, err := io.ReadFull(br, rec); err != nil {
			return fmt.Errorf("reading TOC spill: %w", err)
		}
		e = estargz.TOCEntry{}
		if err := decodeRecord(rec, &e); err != nil {
			return err
		}
		if err := fn(&e); err != nil {
			return err
		}
	}
	return nil
}

// decodeRecord is Append's inverse.
func decodeRecord(r []byte, e *estargz.TOCEntry) error {
	d := recordDecoder{b: r}
	typ, flags := d.byte(), d.byte()
	if int(typ) >= len(entryTypes) {
		return errors.New("corrupt TOC spill record")
	}
	e.Type = entryTypes[typ]
	e.Name = d.string()
	if flags&recHeader != 0 {
		e.Mode = d.varint()
		e.UID = int(d.varint())
		e.GID = int(d.varint())
		e.Uname = d.string()
		e.Gname = d.string()
		e.ModTime3339 = d.string()
		e.LinkName = d.string()
		e.Size = d.varint()
		e.DevMajor = int(d.varint())
		e.DevMinor = int(d.varint())
		if n := d.uvarint(); n > 0 {
			e.Xattrs = make(map[string][]byte, n)
			for range n {
				k := d.string()
				e.Xattrs[k] = []byte(d.string())
			}
		}
	}
	if flags&recData != 0 {
		e.Offset = d.varint()
		e.ChunkOffset = d.varint()
		e.ChunkSize = d.varint()
		e.ChunkDigest = digest.NewDigestFromBytes(digest.SHA256, d.bytes(sha256Size)).String()
	}
	if flags&recInnerOffset != 0 {
		e.InnerOffset = d.varint()
	}
	if flags&recDigest != 0 {
		e.Digest = digest.NewDigestFromBytes(digest.SHA256, d.bytes(sha256Size)).String()
	}
	if d.err != nil || len(d.b) != 0 {
		return errors.New("corrupt TOC spill record")
	}
	return nil
}

type recordDecoder struct {
	b   []byte
	err error
}

func (d *recordDecoder) fail() { d.err, d.b = errors.New("short"), nil }

func (d *recordDecoder) byte() byte {
	if len(d.b) < 1 {
		d.fail()
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *recordDecoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *recordDecoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *recordDecoder) bytes(n int) []byte {
	if uint64(len(d.b)) < uint64(n) {
		d.fail()
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

func (d *recordDecoder) string() string { return string(d.bytes(int(d.uvarint()))) }

func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}
