package stargz

import (
	"bytes"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/labels"
)

// Verify and OpenTOC decode a zstd:chunked layer's TOC and chunks within
// MaxZstdWindow: a frame declaring more is refused, naming the limit.
func TestZstdChunkedReadersBoundTheWindow(t *testing.T) {
	f := convertertest.NewFixture(t)
	var zst bytes.Buffer
	toc, _ := writeLayout(t, layoutCases()["chunked"], &zstdChunkedCompressor{streams: newZstdStreams(1)}, &zst, 1<<20)
	// The frame of the first chunk of "big" declaring 512 MiB (its blocks
	// need 4 MiB): the TOC still matches, only the window is beyond the limit.
	r, err := OpenTOC(f.Ctx, sizedBytes{bytes.NewReader(zst.Bytes())})
	require.NoError(t, err)
	big, ok := r.Lookup("big")
	require.True(t, ok)
	wide := bytes.Clone(zst.Bytes())
	convertertest.DeclareZstdWindow(wide[big.Offset:], 512<<20)
	for _, tc := range []struct {
		name      string
		blob      []byte
		limit     int64 // MaxZstdWindow; 0: the default
		verifyErr bool
		openErr   bool
	}{
		{"as written", zst.Bytes(), 0, false, false},
		{"as written, under a limit below every frame", zst.Bytes(), 512, true, true},
		{"a chunk's frame declares 512 MiB", wide, 0, true, false},
		{"a chunk's frame declares 512 MiB, no limit", wide, -1, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := converter.WithLimits(f.Ctx, converter.Limits{MaxZstdWindow: tc.limit})
			desc := f.PutBlob(t, tc.blob, ocispec.MediaTypeImageLayerZstd, nil)
			desc.Annotations = map[string]string{labels.TOCDigestAnnotation: toc.String()}
			refused := func(err error, want bool) {
				t.Helper()
				if !want {
					require.NoError(t, err)
					return
				}
				require.Error(t, err)
				assert.True(t, errdefs.IsInvalidArgument(err), "class: %v", err)
				assert.Contains(t, err.Error(), "max_zstd_window")
			}
			_, err := Verify(ctx, f.CS, desc)
			refused(err, tc.verifyErr)
			_, err = OpenTOC(ctx, sizedBytes{bytes.NewReader(tc.blob)})
			refused(err, tc.openErr)
			if !tc.openErr {
				got, err := readTOCDigest(ctx, f.CS, desc)
				require.NoError(t, err)
				assert.Equal(t, digest.Digest(toc), got)
			}
		})
	}
}
