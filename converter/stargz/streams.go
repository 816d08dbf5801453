package stargz

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/containerd/errdefs"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// streamCursor walks a blob's compressed streams (gzip members, zstd
// frames) from its start: it knows where the next one begins before it
// opens it.
type streamCursor interface {
	// peek is the compressed offset of the next stream (the blob's size
	// after the last one).
	peek() int64
	// open opens the stream at peek's offset and returns its uncompressed bytes.
	open() (io.Reader, error)
	close()
}

// streamReader reads the uncompressed bytes of a blob's streams one after
// another, hashing every byte, and tells which stream the next byte comes
// from: enough to check that a TOC's offsets point at the streams holding
// the data it describes. It stops at limit, which must be a stream's start.
type streamReader struct {
	cur     streamCursor
	r       io.Reader // the open stream, nil between streams
	start   int64     // its compressed offset
	dstart  int64     // the uncompressed position where it began
	pos     int64     // uncompressed bytes returned
	buf     []byte
	pending []byte // uncompressed bytes of the open stream not yet returned
	hash    hash.Hash
	limit   int64 // streams starting here or beyond are not opened
	size    int64
	opened  int // streams opened so far
}

func newStreamReader(cur streamCursor, size int64, h hash.Hash) *streamReader {
	return &streamReader{cur: cur, buf: make([]byte, 64<<10), hash: h, limit: size, size: size}
}

// fill makes pending hold the next bytes; io.EOF at the limit.
func (s *streamReader) fill() error {
	for len(s.pending) == 0 {
		if s.r == nil {
			next := s.cur.peek()
			if next == s.limit {
				return io.EOF
			}
			if next > s.limit {
				return fmt.Errorf("a compressed stream spans offset %d, where the layout puts a stream boundary: %w", s.limit, errdefs.ErrInvalidArgument)
			}
			r, err := s.cur.open()
			if err != nil {
				return fmt.Errorf("compressed stream at offset %d: %v: %w", next, err, errdefs.ErrInvalidArgument)
			}
			s.r, s.start, s.dstart = r, next, s.pos
			s.opened++
		}
		n, err := s.r.Read(s.buf)
		if n > 0 {
			s.pending = s.buf[:n]
			s.hash.Write(s.pending)
		}
		if err == io.EOF {
			s.r = nil
		} else if err != nil {
			return fmt.Errorf("compressed stream at offset %d: %v: %w", s.start, err, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// Read returns uncompressed bytes up to the limit.
func (s *streamReader) Read(p []byte) (int, error) {
	if err := s.fill(); err != nil {
		return 0, err
	}
	n := copy(p, s.pending)
	s.pending = s.pending[n:]
	s.pos += int64(n)
	return n, nil
}

// streamOfNext returns the compressed offset of the stream holding the next
// byte, and the uncompressed position where that stream began.
func (s *streamReader) streamOfNext() (offset, began int64, err error) {
	if err := s.fill(); err != nil {
		if err == io.EOF {
			err = fmt.Errorf("the layer's data ends early: %w", errdefs.ErrInvalidArgument)
		}
		return 0, 0, err
	}
	return s.start, s.dstart, nil
}

// gzipCursor walks gzip members: a member is read through the bufio.Reader
// itself (it is a flate.Reader, so the decompressor takes no bytes beyond
// the member), so the next one starts where the buffer stands.
type gzipCursor struct {
	cr *countingReader
	br *bufio.Reader
	zr *gzip.Reader
}

func newGzipCursor(ra io.ReaderAt, size int64) *gzipCursor {
	cr := &countingReader{r: io.NewSectionReader(ra, 0, size)}
	return &gzipCursor{cr: cr, br: bufio.NewReaderSize(cr, 256<<10)}
}

func (g *gzipCursor) peek() int64 { return g.cr.n - int64(g.br.Buffered()) }

func (g *gzipCursor) open() (io.Reader, error) {
	var err error
	if g.zr == nil {
		g.zr, err = gzip.NewReader(g.br)
	} else {
		err = g.zr.Reset(g.br)
	}
	if err != nil {
		return nil, err
	}
	g.zr.Multistream(false)
	return g.zr, nil
}

func (g *gzipCursor) close() {}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// zstdCursor walks zstd frames by their headers and block headers (RFC
// 8878: a frame's length is not in its header, its blocks' are), decoding
// each frame on its own; skippable frames yield nothing.
type zstdCursor struct {
	ra        io.ReaderAt
	size, pos int64
	dec       *zstd.Decoder
	opts      []zstd.DOption
	maxWindow uint64
}

func newZstdCursor(ra io.ReaderAt, size int64, maxWindow uint64, opts ...zstd.DOption) *zstdCursor {
	return &zstdCursor{ra: ra, size: size, maxWindow: maxWindow, opts: opts}
}

func (z *zstdCursor) peek() int64 { return z.pos }

func (z *zstdCursor) open() (io.Reader, error) {
	start := z.pos
	end, skippable, err := z.frameEnd(start)
	if err != nil {
		return nil, err
	}
	z.pos = end
	if skippable {
		return eofReader{}, nil
	}
	r := io.NewSectionReader(z.ra, start, end-start)
	if z.dec == nil {
		opts := append([]zstd.DOption{zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true)}, z.opts...)
		if z.maxWindow > 0 { // frameEnd refuses larger windows first; the decoder holds to it too
			opts = append(opts, zstd.WithDecoderMaxWindow(z.maxWindow), zstd.WithDecoderMaxMemory(z.maxWindow))
		}
		z.dec, err = zstd.NewReader(r, opts...)
	} else {
		err = z.dec.Reset(r)
	}
	return z.dec, err
}

func (z *zstdCursor) close() {
	if z.dec != nil {
		z.dec.Close()
	}
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// Frame and block layout constants of RFC 8878.
const (
	zstdFrameMagic         = 0xFD2FB528
	zstdSkippableMagicMask = 0xFFFFFFF0
	zstdSkippableMagic     = 0x184D2A50
	zstdMaxBlockSize       = 128 << 10
)

var errShortFrame = errors.New("truncated zstd frame")

// frameEnd returns the offset just past the frame at off, and whether it
// is a skippable frame. A frame whose window is over maxWindow is refused
// before anything is decoded.
func (z *zstdCursor) frameEnd(off int64) (int64, bool, error) {
	var hdr [18]byte // magic, descriptor, window, dictionary ID (4 at most), content size (8 at most)
	n, err := z.ra.ReadAt(hdr[:], off)
	if n < 8 && err != nil {
		return 0, false, errShortFrame
	}
	magic := binary.LittleEndian.Uint32(hdr[:4])
	if magic&zstdSkippableMagicMask == zstdSkippableMagic {
		end := off + 8 + int64(binary.LittleEndian.Uint32(hdr[4:8]))
		if end > z.size {
			return 0, false, errShortFrame
		}
		return end, true, nil
	}
	if magic != zstdFrameMagic {
		return 0, false, fmt.Errorf("no zstd frame at offset %d", off)
	}
	fhd := hdr[4]
	single := fhd&0x20 != 0
	checksum := fhd&0x04 != 0
	dictSize := [4]int64{0, 1, 2, 4}[fhd&0x03]
	fcsSize := [4]int64{0, 2, 4, 8}[fhd>>6]
	if fhd>>6 == 0 && single {
		fcsSize = 1
	}
	pos := int64(5)
	if !single {
		wd := hdr[5]
		exp, mantissa := uint64(wd>>3), uint64(wd&7)
		base := uint64(1) << (10 + exp)
		window := base + base/8*mantissa
		if z.maxWindow > 0 && window > z.maxWindow {
			return 0, false, fmt.Errorf("zstd frame at offset %d declares a %d-byte window, over the limit of %d bytes (max_zstd_window): %w",
				off, window, z.maxWindow, errdefs.ErrInvalidArgument)
		}
		pos++
	}
	pos += dictSize
	if single && z.maxWindow > 0 { // the window is the content size
		var fcs uint64
		for i := fcsSize - 1; i >= 0; i-- {
			fcs = fcs<<8 | uint64(hdr[pos+i])
		}
		if fcsSize == 2 {
			fcs += 256
		}
		if fcs > z.maxWindow {
			return 0, false, fmt.Errorf("zstd frame at offset %d declares a %d-byte window, over the limit of %d bytes (max_zstd_window): %w",
				off, fcs, z.maxWindow, errdefs.ErrInvalidArgument)
		}
	}
	pos += fcsSize
	at := off + pos
	var bh [3]byte
	for {
		if _, err := z.ra.ReadAt(bh[:], at); err != nil {
			return 0, false, errShortFrame
		}
		v := uint32(bh[0]) | uint32(bh[1])<<8 | uint32(bh[2])<<16
		last, typ, size := v&1 == 1, (v>>1)&3, int64(v>>3)
		switch typ {
		case 0, 2: // raw, compressed
			if size > zstdMaxBlockSize {
				return 0, false, fmt.Errorf("zstd block of %d bytes at offset %d", size, at)
			}
			at += 3 + size
		case 1: // RLE: one byte repeated
			at += 3 + 1
		default:
			return 0, false, fmt.Errorf("reserved zstd block type at offset %d", at)
		}
		if at > z.size {
			return 0, false, errShortFrame
		}
		if last {
			break
		}
	}
	if checksum {
		at += 4
	}
	if at > z.size {
		return 0, false, errShortFrame
	}
	return at, false, nil
}
