package layerio_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"runtime"
	"strconv"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/internal/layerio"
)

// zstdFrame is payload as one streamed zstd frame declaring window.
func zstdFrame(t *testing.T, payload []byte, window uint64) []byte {
	t.Helper()
	var b bytes.Buffer
	zw, err := zstd.NewWriter(&b, zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(1<<20))
	require.NoError(t, err)
	_, err = zw.Write(payload)
	require.NoError(t, err)
	require.NoError(t, zw.Flush(), "a stream of unknown size, as layers are: a frame with a window descriptor")
	require.NoError(t, zw.Close())
	return convertertest.DeclareZstdWindow(b.Bytes(), window)
}

// skippableFrame is a zstd skippable frame of n bytes of payload.
func skippableFrame(n int) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 0x184D2A53)
	b = binary.LittleEndian.AppendUint32(b, uint32(n))
	return append(b, make([]byte, n)...)
}

// singleSegmentFrame is a frame with no window descriptor that declares a
// content size of size (its window, then) and holds 5 raw bytes.
func singleSegmentFrame(size uint64) []byte {
	b := []byte{0x28, 0xb5, 0x2f, 0xfd, 3<<6 | 1<<5}
	b = binary.LittleEndian.AppendUint64(b, size)
	bh := uint32(5<<3 | 1) // raw, last
	b = append(b, byte(bh), byte(bh>>8), byte(bh>>16))
	return append(b, "hello"...)
}

func TestZstdReaderBoundsTheWindow(t *testing.T) {
	payload := bytes.Repeat([]byte("lazyconv zstd window "), 5000)
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	for _, tc := range []struct {
		name   string
		limit  int64 // MaxZstdWindow; 0: the default
		stream []byte
		want   []byte // the output, when it is not refused
		window uint64 // the window of the refused frame, 0 when none is
	}{
		{"8 MiB under the default", 0, zstdFrame(t, payload, 8<<20), payload, 0},
		{"128 MiB (zstd --long) under the default", 0, zstdFrame(t, payload, 128<<20), payload, 0},
		{"512 MiB (zstd --long=29) under the default", 0, zstdFrame(t, payload, 512<<20), nil, 512 << 20},
		{"1 TiB under the default", 0, zstdFrame(t, payload, 1<<40), nil, 1 << 40},
		{"512 MiB with no limit", -1, zstdFrame(t, payload, 512<<20), payload, 0},
		{"at the limit", 8 << 20, zstdFrame(t, payload, 8<<20), payload, 0},
		{"beyond a lower limit", 8 << 20, zstdFrame(t, payload, 16<<20), nil, 16 << 20},
		{"a limit below 1 KiB refuses every frame", 512, zstdFrame(t, payload, 1<<10), nil, 1 << 10},
		{"a later frame beyond the limit", 0, cat(zstdFrame(t, payload, 1<<20), zstdFrame(t, payload, 512<<20)), nil, 512 << 20},
		{"frames under the limit", 0, cat(zstdFrame(t, payload, 1<<20), zstdFrame(t, payload, 64<<20)), cat(payload, payload), 0},
		{"behind a skippable frame", 0, cat(skippableFrame(100), zstdFrame(t, payload, 512<<20)), nil, 512 << 20},
		{"a skippable frame between", 0, cat(zstdFrame(t, payload, 1<<20), skippableFrame(0), zstdFrame(t, payload, 2<<20)), cat(payload, payload), 0},
		{"a single-segment frame under the limit", 0, singleSegmentFrame(5), []byte("hello"), 0},
		{"a single-segment frame whose content size is beyond the limit", 0, singleSegmentFrame(1 << 30), nil, 1 << 30},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := converter.WithLimits(context.Background(), converter.Limits{MaxZstdWindow: tc.limit})
			var before runtime.MemStats
			runtime.ReadMemStats(&before)
			zr, err := layerio.NewZstdReader(ctx, bytes.NewReader(tc.stream))
			require.NoError(t, err, "a frame is refused when it is read, never here")
			defer zr.Close()
			out, err := io.ReadAll(zr)
			if tc.window == 0 {
				require.NoError(t, err)
				assert.Equal(t, tc.want, out)
				return
			}
			var after runtime.MemStats
			runtime.ReadMemStats(&after)
			require.Error(t, err)
			assert.True(t, errdefs.IsInvalidArgument(err), "class: %v", err)
			for _, s := range []string{"max_zstd_window", "--max-zstd-window", "window of " + strconv.FormatUint(tc.window, 10) + " bytes"} {
				assert.Contains(t, err.Error(), s)
			}
			assert.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(32<<20), "refused before the window is allocated")
			_, again := zr.Read(make([]byte, 10))
			assert.Equal(t, err, again, "the refusal sticks")
		})
	}
}

// A reader is reset onto a new stream, good or bad, as the chunk readers do.
func TestZstdReaderReset(t *testing.T) {
	payload := []byte("a chunk of a zstd:chunked layer")
	good, bad := zstdFrame(t, payload, 1<<20), zstdFrame(t, payload, 512<<20)
	zr, err := layerio.NewZstdReader(context.Background(), bytes.NewReader(bad))
	require.NoError(t, err)
	defer zr.Close()
	for i, tc := range []struct {
		stream []byte
		ok     bool
	}{{bad, false}, {good, true}, {bad, false}, {good, true}, {good, true}} {
		if i > 0 {
			require.NoError(t, zr.Reset(bytes.NewReader(tc.stream)))
		}
		out, err := io.ReadAll(zr)
		if tc.ok {
			require.NoError(t, err, "stream %d", i)
			assert.Equal(t, payload, out)
		} else {
			assert.True(t, errdefs.IsInvalidArgument(err), "stream %d: %v", i, err)
		}
	}
	require.NoError(t, zr.Reset(nil))
}

// Bytes that are no zstd are the decoder's to refuse: following them never
// panics nor calls them a window.
func TestZstdReaderOnGarbage(t *testing.T) {
	for _, stream := range [][]byte{nil, []byte("not zstd"), {0x28, 0xb5, 0x2f, 0xfd}, {0x28, 0xb5, 0x2f, 0xfd, 0x08, 0x00},
		append(zstdFrame(t, []byte("x"), 1<<20)[:8], 0xff, 0xff, 0xff, 0xff)} {
		zr, err := layerio.NewZstdReader(context.Background(), bytes.NewReader(stream))
		require.NoError(t, err)
		_, err = io.ReadAll(zr)
		if err != nil {
			assert.NotContains(t, err.Error(), "max_zstd_window")
		}
		zr.Close()
	}
}
