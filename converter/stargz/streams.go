package stargz

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync/atomic"

	"github.com/containerd/errdefs"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/lazyconv/lazyconv/internal/layerio"
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
	read atomic.Int64 // compressed bytes the buffer took
	br   *bufio.Reader
	zr   *gzip.Reader
}

func newGzipCursor(ra io.ReaderAt, size int64) *gzipCursor {
	g := &gzipCursor{}
	g.br = bufio.NewReaderSize(&layerio.CountingReader{R: io.NewSectionReader(ra, 0, size), N: &g.read}, 256<<10)
	return g
}

func (g *gzipCursor) peek() int64 { return g.read.Load() - int64(g.br.Buffered()) }

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

// zstdCursor walks zstd frames by their headers and block headers (RFC
// 8878: a frame's length is not in its header, its blocks' are), decoding
// each frame on its own through layerio's ZstdReader (the conversion's
// window limit); skippable frames yield nothing.
type zstdCursor struct {
	ctx       context.Context
	ra        io.ReaderAt
	size, pos int64
	dec       *layerio.ZstdReader
	maxWindow uint64
}

func newZstdCursor(ctx context.Context, ra io.ReaderAt, size int64) *zstdCursor {
	return &zstdCursor{ctx: ctx, ra: ra, size: size, maxWindow: maxZstdWindow(ctx)}
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
		z.dec, err = layerio.NewZstdReader(z.ctx, r)
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

// zstdMaxBlockSize is RFC 8878's largest block.
const zstdMaxBlockSize = 128 << 10

var errShortFrame = errors.New("truncated zstd frame")

// frameEnd returns the offset just past the frame at off, and whether it
// is a skippable frame. A frame whose window is over maxWindow is refused
// before anything is decoded.
func (z *zstdCursor) frameEnd(off int64) (int64, bool, error) {
	var buf [zstd.HeaderMaxSize]byte
	n, err := z.ra.ReadAt(buf[:], off)
	if n == 0 && err != nil {
		return 0, false, errShortFrame
	}
	var h zstd.Header
	if err := h.Decode(buf[:n]); err != nil {
		return 0, false, fmt.Errorf("no zstd frame at offset %d: %v", off, err)
	}
	if h.Skippable {
		end := off + int64(h.HeaderSize) + int64(h.SkippableSize)
		if end > z.size {
			return 0, false, errShortFrame
		}
		return end, true, nil
	}
	window := h.WindowSize
	if h.SingleSegment { // the window is the content size
		window = h.FrameContentSize
	}
	if z.maxWindow > 0 && window > z.maxWindow {
		return 0, false, fmt.Errorf("zstd frame at offset %d declares a %d-byte window, over the limit of %d bytes (max_zstd_window): %w",
			off, window, z.maxWindow, errdefs.ErrInvalidArgument)
	}
	at := off + int64(h.HeaderSize)
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
	if h.HasCheckSum {
		at += 4
	}
	if at > z.size {
		return 0, false, errShortFrame
	}
	return at, false, nil
}
