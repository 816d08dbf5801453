package layerio

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/containerd/errdefs"
	"github.com/klauspost/compress/zstd"

	"github.com/lazyconv/lazyconv/converter"
)

// maxFormatWindow is the largest window a zstd frame can declare (and the
// largest klauspost's decoder accepts): what "no limit" means.
const maxFormatWindow = (1 << 41) + 7*(1<<38)

// ZstdReader decompresses a zstd stream read from layer data (a layer, a
// zstd:chunked TOC or chunk) within the MaxZstdWindow limit of the context
// it was made with: a frame declaring a larger window is refused before its
// decoder allocates that history, with ErrInvalidArgument naming the limit
// and the window. It decodes on the calling goroutine (no concurrency) with
// klauspost's low-memory setting, so its memory is the window of the frame
// being read plus a few blocks, whatever the stream's length.
type ZstdReader struct {
	dec   *zstd.Decoder
	watch frameWatch
	limit int64
	err   error // a refusal, sticky
}

// NewZstdReader returns a ZstdReader of r under ctx's limits. A frame over
// the limit is refused at the Read that reaches its header (the first Read
// for the first frame), never here; r is not read before the first Read.
func NewZstdReader(ctx context.Context, r io.Reader) (*ZstdReader, error) {
	z := &ZstdReader{limit: converter.LimitsFrom(ctx).MaxZstdWindow}
	z.watch.reset(r)
	window, memory := uint64(maxFormatWindow), uint64(1<<63)
	if z.limit >= 0 {
		window, memory = max(uint64(z.limit), zstd.MinWindowSize), max(uint64(z.limit), zstd.MinWindowSize)
	}
	dec, err := zstd.NewReader(&z.watch,
		zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
		// The window the decoder accepts, and (for streams) the history it
		// holds for a frame that declares none but its content size.
		zstd.WithDecoderMaxWindow(window), zstd.WithDecoderMaxMemory(memory),
		// Never decode a small in-memory input whole into a buffer.
		zstd.WithDecodeBuffersBelow(0))
	if err != nil {
		return nil, z.classify(err)
	}
	z.dec = dec
	return z, nil
}

// Read reads decompressed bytes.
func (z *ZstdReader) Read(p []byte) (int, error) {
	if z.err != nil {
		return 0, z.err
	}
	n, err := z.dec.Read(p)
	if z.watch.over(z.limit) {
		// Below 1 KiB the decoder's own bound is looser than the limit.
		z.err = z.refusal()
		return 0, z.err
	}
	if err != nil && err != io.EOF {
		err = z.classify(err)
	}
	return n, err
}

// Reset makes z read a new stream from r (nil releases the last one).
func (z *ZstdReader) Reset(r io.Reader) error {
	z.err = nil
	z.watch.reset(r)
	if r == nil {
		return z.dec.Reset(nil)
	}
	return z.classify(z.dec.Reset(&z.watch))
}

// Close releases the decoder; z cannot be used after.
func (z *ZstdReader) Close() error {
	z.dec.Close()
	return nil
}

// classify names the limit when the decoder refused a frame for its window,
// and calls any other window complaint corrupt data; other errors are
// returned as they are.
func (z *ZstdReader) classify(err error) error {
	if err == nil || !(errors.Is(err, zstd.ErrWindowSizeExceeded) || errors.Is(err, zstd.ErrDecoderSizeExceeded)) {
		return err
	}
	if z.watch.over(z.limit) {
		z.err = z.refusal()
		return z.err
	}
	// A back-reference beyond the frame's own window.
	return fmt.Errorf("corrupt zstd data: %v: %w", err, errdefs.ErrInvalidArgument)
}

func (z *ZstdReader) refusal() error {
	return fmt.Errorf("a zstd frame declares a window of %d bytes (%s), beyond the limit of %d (max_zstd_window, --max-zstd-window; -1: none): %w",
		z.watch.window, sizeString(z.watch.window), z.limit, errdefs.ErrInvalidArgument)
}

func sizeString(n uint64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

// frameWatch passes a zstd stream's compressed bytes through and follows
// its frame structure (headers, block headers, checksums, skippable frames)
// to know the window each frame declares: the decoder refuses a frame over
// its limit without saying what the frame declared. It never holds more
// than a header; on bytes it cannot follow it stops following and leaves
// the complaint to the decoder.
type frameWatch struct {
	r      io.Reader
	state  watchState
	head   []byte // the frame header gathered so far
	block  [3]byte
	nblock int
	skip   int64 // bytes to pass in watchSkip
	next   watchState
	sum    bool   // the current frame ends with a checksum
	window uint64 // declared by the latest frame
	lost   bool
}

type watchState int

const (
	watchHeader watchState = iota // a frame header
	watchBlock                    // a block header
	watchSkip                     // a block's body, a checksum, a skippable frame's payload
)

func (w *frameWatch) reset(r io.Reader) {
	*w = frameWatch{r: r, head: w.head[:0]}
}

// over reports whether the latest frame declares a window beyond limit.
func (w *frameWatch) over(limit int64) bool {
	return limit >= 0 && w.window > uint64(limit)
}

// Read reads from the stream and follows what it read.
func (w *frameWatch) Read(p []byte) (int, error) {
	n, err := w.r.Read(p)
	w.follow(p[:n])
	return n, err
}

func (w *frameWatch) follow(p []byte) {
	for len(p) > 0 && !w.lost {
		switch w.state {
		case watchHeader:
			old := len(w.head)
			take := min(len(p), zstd.HeaderMaxSize-old)
			w.head = append(w.head, p[:take]...)
			var h zstd.Header
			err := h.Decode(w.head)
			if errors.Is(err, io.ErrUnexpectedEOF) && len(w.head) < zstd.HeaderMaxSize {
				p = p[take:]
				continue
			}
			if err != nil || h.HeaderSize <= old || h.HeaderSize > len(w.head) {
				w.lost = true
				continue
			}
			p = p[h.HeaderSize-old:]
			w.head = w.head[:0]
			if h.Skippable {
				w.state, w.skip, w.next = watchSkip, int64(h.SkippableSize), watchHeader
				continue
			}
			w.window = h.WindowSize
			if h.SingleSegment {
				// The frame's content is its window (as the decoder takes it).
				w.window = max(h.FrameContentSize, zstd.MinWindowSize)
			}
			w.sum, w.state, w.nblock = h.HasCheckSum, watchBlock, 0
		case watchBlock:
			n := copy(w.block[w.nblock:], p)
			w.nblock += n
			p = p[n:]
			if w.nblock < len(w.block) {
				continue
			}
			bh := uint32(w.block[0]) | uint32(binary.LittleEndian.Uint16(w.block[1:]))<<8
			last, size := bh&1 == 1, int64(bh>>3)
			switch (bh >> 1) & 3 {
			case 0, 2: // raw, compressed: size bytes follow
			case 1: // RLE: one byte follows
				size = 1
			default:
				w.lost = true
				continue
			}
			w.state, w.skip, w.next, w.nblock = watchSkip, size, watchBlock, 0
			if last {
				w.next = watchHeader
				if w.sum {
					w.skip += 4
				}
			}
		case watchSkip:
			n := min(int64(len(p)), w.skip)
			p = p[n:]
			if w.skip -= n; w.skip == 0 {
				w.state = w.next
			}
		}
	}
}
