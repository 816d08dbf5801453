package stargz

import (
	"bytes"
	"context"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/lazyconv/lazyconv/converter"
)

// fuzzLimits keep a fuzzed TOC small, so that a run explores parsing, not memory.
var fuzzLimits = converter.Limits{MaxTOCBytes: 1 << 20}

// sizedBytes is a blob in memory.
type sizedBytes struct{ *bytes.Reader }

func (b sizedBytes) Size() int64 { return int64(b.Len()) }

func fuzzSeeds(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("not a layer at all"))
	f.Add(gzipFooter(0))
	f.Add(append(bytes.Repeat([]byte{0x1f, 0x8b, 8, 0}, 20), gzipFooter(3)...))
}

// FuzzOpenTOC feeds arbitrary blobs to footer and TOC parsing (eStargz and
// zstd:chunked): it may refuse them, never panic or read beyond the limit.
func FuzzOpenTOC(f *testing.F) {
	fuzzSeeds(f)
	ctx := converter.WithLimits(context.Background(), fuzzLimits)
	f.Fuzz(func(t *testing.T, blob []byte) {
		r, err := OpenTOC(ctx, sizedBytes{bytes.NewReader(blob)})
		if err == nil && r == nil {
			t.Fatal("no reader and no error")
		}
		if err != nil && !errdefs.IsInvalidArgument(err) {
			t.Fatalf("error without the InvalidArgument class: %v", err)
		}
	})
}

// FuzzIsEStargz feeds arbitrary blobs to eStargz detection.
func FuzzIsEStargz(f *testing.F) {
	fuzzSeeds(f)
	ctx := converter.WithLimits(context.Background(), fuzzLimits)
	f.Fuzz(func(t *testing.T, blob []byte) {
		size, err := gzipTOCSize(ctx, sizedBytes{bytes.NewReader(blob)})
		if err != nil && !errdefs.IsInvalidArgument(err) {
			t.Fatalf("error without the InvalidArgument class: %v", err)
		}
		if size > fuzzLimits.MaxTOCBytes {
			t.Fatalf("a TOC of %d bytes passed the limit", size)
		}
	})
}
