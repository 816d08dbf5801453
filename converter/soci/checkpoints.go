//go:build cgo

package soci

/*
#cgo LDFLAGS: -lz
#include <stdlib.h>
#include <zlib.h>

// One zlib inflater, stepped from Go a block at a time. No Go pointer is
// kept in the stream between calls.
static z_stream *lz_new(void) {
	z_stream *s = calloc(1, sizeof *s);
	if (s == NULL) return NULL;
	if (inflateInit2(s, 47) != Z_OK) { free(s); return NULL; } // gzip or zlib, as soci's builder
	return s;
}

static void lz_free(z_stream *s) { inflateEnd(s); free(s); }

static int lz_reset(z_stream *s) { return inflateReset2(s, 47); }

// lz_step inflates with Z_BLOCK (returning at every deflate block
// boundary) from in into out, and says what it consumed and produced and
// the stream's data_type.
static int lz_step(z_stream *s, unsigned char *in, unsigned inlen, unsigned char *out, unsigned outlen,
                   unsigned *consumed, unsigned *produced, int *dtype) {
	s->next_in = in; s->avail_in = inlen;
	s->next_out = out; s->avail_out = outlen;
	int ret = inflate(s, Z_BLOCK);
	*consumed = inlen - s->avail_in;
	*produced = outlen - s->avail_out;
	*dtype = s->data_type;
	s->next_in = NULL; s->avail_in = 0;
	s->next_out = NULL; s->avail_out = 0;
	return ret;
}
*/
import "C"

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"unsafe"

	"github.com/containerd/errdefs"
)

// checkpointer inflates a gzip layer once with zlib, yielding its tar to
// the reader and recording, as it goes, the gzip checkpoints soci's builder
// records (generate_zinfo_from_fp, soci-snapshotter v0.16.1): after the
// gzip header, then at the first deflate block boundary past every span of
// output, each with the bits left in its byte and the last 32 KiB of output.
// It is one pass where soci's builder makes two (zlib for the checkpoints,
// Go's gzip for the file table), and it refuses a layer whose checkpoints
// pass maxCheckpointBytes as soon as they do.
type checkpointer struct {
	src  *bufio.Reader
	strm *C.z_stream
	span int64

	in        []byte // compressed bytes read, in[inPos:] not yet consumed
	inPos     int
	srcEOF    bool
	out       []byte // output of the last step, out[outPos:] not yet read
	outPos    int
	window    []byte // the last 32 KiB of output (zeros before the first), as a ring
	winPos    int
	totIn     int64
	totOut    int64
	last      int64
	ended     bool
	err       error
	points    []checkpoint
	pointSize int64
}

func newCheckpointer(src io.Reader, span int64) (*checkpointer, error) {
	s := C.lz_new()
	if s == nil {
		return nil, fmt.Errorf("zlib: cannot start an inflater")
	}
	return &checkpointer{src: bufio.NewReaderSize(src, 1<<20), strm: s, span: span,
		in: make([]byte, 0, 64<<10), out: make([]byte, 0, 256<<10), window: make([]byte, windowSize)}, nil
}

// Close frees the inflater.
func (c *checkpointer) Close() {
	if c.strm != nil {
		C.lz_free(c.strm)
		c.strm = nil
	}
}

// Read yields the uncompressed tar.
func (c *checkpointer) Read(p []byte) (int, error) {
	for c.outPos == len(c.out) {
		if c.err != nil {
			return 0, c.err
		}
		if c.ended {
			return 0, io.EOF
		}
		c.err = c.step()
	}
	n := copy(p, c.out[c.outPos:])
	c.outPos += n
	return n, nil
}

// step runs the inflater once, as soci's loop does.
func (c *checkpointer) step() error {
	if c.inPos == len(c.in) {
		if c.srcEOF {
			return fmt.Errorf("the gzip stream is truncated: %w", errdefs.ErrInvalidArgument)
		}
		n, err := io.ReadFull(c.src, c.in[:cap(c.in)])
		c.in, c.inPos = c.in[:n], 0
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			c.srcEOF = true
		} else if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("the gzip stream is truncated: %w", errdefs.ErrInvalidArgument)
		}
	}
	c.out = c.out[:cap(c.out)]
	var consumed, produced C.uint
	var dtype C.int
	in := c.in[c.inPos:]
	ret := C.lz_step(c.strm, (*C.uchar)(unsafe.Pointer(&in[0])), C.uint(len(in)), (*C.uchar)(unsafe.Pointer(&c.out[0])), C.uint(len(c.out)),
		&consumed, &produced, &dtype)
	c.inPos += int(consumed)
	c.out, c.outPos = c.out[:produced], 0
	c.totIn += int64(consumed)
	c.totOut += int64(produced)
	c.remember(c.out)
	switch ret {
	case C.Z_OK, C.Z_BUF_ERROR:
	case C.Z_STREAM_END:
		// Another gzip member follows (pigz, concatenated streams), or the
		// stream is done.
		if c.inPos < len(c.in) || !c.atEOF() {
			if C.lz_reset(c.strm) != C.Z_OK {
				return fmt.Errorf("zlib: cannot reset the inflater")
			}
			return nil
		}
		c.ended = true
		return nil
	default:
		return fmt.Errorf("not a valid gzip stream (zlib %d after %d bytes): %w", int(ret), c.totIn, errdefs.ErrInvalidArgument)
	}
	if dtype&128 != 0 && dtype&64 == 0 && (c.totOut == 0 || c.totOut-c.last > c.span) {
		c.pointSize += packedCheckpoint
		if c.pointSize+checkpointsHeader > maxCheckpointBytes {
			return fmt.Errorf("the layer's zTOC at span %d would hold more than %d bytes of checkpoints (%d bytes of tar so far; use a larger span-size): %w",
				c.span, maxCheckpointBytes, c.totOut, errdefs.ErrInvalidArgument)
		}
		w := make([]byte, windowSize)
		n := copy(w, c.window[c.winPos:])
		copy(w[n:], c.window[:c.winPos])
		c.points = append(c.points, checkpoint{in: c.totIn, out: c.totOut, bits: uint(dtype & 7), window: w})
		c.last = c.totOut
	}
	return nil
}

// atEOF reports whether the source has no byte left.
func (c *checkpointer) atEOF() bool {
	if c.srcEOF {
		return true
	}
	_, err := c.src.Peek(1)
	return err != nil
}

// remember keeps the last 32 KiB of output.
func (c *checkpointer) remember(p []byte) {
	if len(p) >= windowSize {
		copy(c.window, p[len(p)-windowSize:])
		c.winPos = 0
		return
	}
	n := copy(c.window[c.winPos:], p)
	if n < len(p) {
		copy(c.window, p[n:])
	}
	c.winPos = (c.winPos + len(p)) % windowSize
}

// blob is the checkpoints in soci's current layout (parseCheckpoints reads
// it back).
func (c *checkpointer) blob() []byte {
	b := make([]byte, checkpointsHeader, checkpointsHeader+len(c.points)*packedCheckpoint)
	binary.LittleEndian.PutUint32(b, uint32(len(c.points)))
	binary.LittleEndian.PutUint64(b[4:], uint64(c.span))
	for _, p := range c.points {
		b = binary.LittleEndian.AppendUint64(b, uint64(p.in))
		b = binary.LittleEndian.AppendUint64(b, uint64(p.out))
		b = append(b, byte(p.bits))
		b = append(b, p.window...)
	}
	return b
}
