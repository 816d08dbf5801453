package stargz_test

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/converter/stargz"
	"github.com/lazyconv/lazyconv/internal/imagegen"
	"github.com/lazyconv/lazyconv/labels"
)

// assertZstdChunkedOf checks that desc is zstd:chunked whose payload is
// exactly tarball, whose TOC verifies, and whose manifest annotations point
// at the compressed TOC they describe.
func assertZstdChunkedOf(t *testing.T, f *convertertest.Fixture, desc ocispec.Descriptor, tarball []byte) {
	t.Helper()
	blob, err := content.ReadBlob(f.Ctx, f.CS, desc)
	require.NoError(t, err)
	sr := io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob)))
	rc, err := estargz.Unpack(sr, new(zstdchunked.Decompressor))
	require.NoError(t, err)
	unpacked, err := io.ReadAll(rc)
	require.NoError(t, err)
	require.True(t, bytes.Equal(tarball, unpacked), "the payload is the source tar byte for byte")
	assert.Equal(t, strconv.Itoa(len(tarball)), desc.Annotations[labels.UncompressedSizeAnnotation])

	r, err := estargz.Open(sr, estargz.WithDecompressors(new(zstdchunked.Decompressor)))
	require.NoError(t, err)
	_, err = r.VerifyTOC(digest.Digest(desc.Annotations[labels.TOCDigestAnnotation]))
	require.NoError(t, err)

	var off, size, rawSize, kind int
	_, err = fmt.Sscanf(desc.Annotations[labels.ZstdChunkedManifestPositionAnnotation], "%d:%d:%d:%d", &off, &size, &rawSize, &kind)
	require.NoError(t, err, "position annotation %q", desc.Annotations[labels.ZstdChunkedManifestPositionAnnotation])
	require.LessOrEqual(t, off+size, len(blob))
	assert.Equal(t, digest.FromBytes(blob[off:off+size]).String(), desc.Annotations[labels.ZstdChunkedManifestChecksumAnnotation],
		"the checksum annotation is the digest of the compressed TOC at the annotated position")
}

func TestZstdChunkedLosslessRoundTrip(t *testing.T) {
	f := convertertest.NewFixture(t)
	conv, err := stargz.NewZstdChunked(stargz.ZstdChunkedOptions{CompressionLevel: 3, ChunkSize: 1 << 20})
	require.NoError(t, err)
	for _, name := range []string{"regular files and dirs", "hard links", "xattrs", "large file", "PAX headers", "devices"} {
		for _, comp := range []string{"gzip", ""} {
			t.Run(name+"/"+comp, func(t *testing.T) {
				tarball := imagegen.TarBytes(convertertest.Cases()[name])
				src := putLayer(t, f, tarball, comp)
				res, err := f.Conv.ConvertLayer(f.Ctx, conv, src, nil)
				require.NoError(t, err)
				assert.Equal(t, ocispec.MediaTypeImageLayerZstd, res.Desc.MediaType)
				assert.Equal(t, digest.FromBytes(tarball), res.DiffID, "zstd:chunked keeps the diffID")
				assertZstdChunkedOf(t, f, res.Desc, tarball)
			})
		}
	}
}

// stargz-snapshotter v0.19.1's own zstd:chunked converter appends to a slice
// its closure shares between calls, so concurrent conversions can swap
// compressors and lose their annotations. Here each conversion owns its
// compressor: every one of 100 concurrent results must carry its own.
func TestZstdChunkedConcurrentConversionsKeepTheirAnnotations(t *testing.T) {
	f := convertertest.NewFixture(t, converter.WithWorkers(8))
	conv, err := stargz.NewZstdChunked(stargz.DefaultZstdChunkedOptions())
	require.NoError(t, err)
	const n = 100
	tars := make([][]byte, n)
	descs := make([]ocispec.Descriptor, n)
	for i := range n {
		tars[i] = imagegen.TarBytes([]imagegen.Entry{convertertest.File(fmt.Sprintf("file-%d", i), []byte(strings.Repeat(fmt.Sprint(i), 1000+i*37)))})
		descs[i] = putLayer(t, f, tars[i], "gzip")
	}
	results := make([]converter.LayerResult, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = f.Conv.ConvertLayer(f.Ctx, conv, descs[i], nil)
		}()
	}
	wg.Wait()
	for i := range n {
		require.NoError(t, errs[i])
		assertZstdChunkedOf(t, f, results[i].Desc, tars[i])
	}
}

func TestZstdChunkedImageKeepsDiffIDs(t *testing.T) {
	f := convertertest.NewFixture(t)
	src := f.TestImage(t, "example.com/app:v1", false)
	conv, err := stargz.NewZstdChunked(stargz.DefaultZstdChunkedOptions())
	require.NoError(t, err)
	res, err := f.Conv.ConvertImage(f.Ctx, f.Store.ImageStore(), "example.com/app:v1", "example.com/app:zc", converter.ImageOptions{Layers: converter.Every(conv)})
	require.NoError(t, err)
	before := convertertest.ReadJSON[ocispec.Manifest](t, f, src)
	after := convertertest.ReadJSON[ocispec.Manifest](t, f, res.Image.Target)
	assert.Equal(t, before.Config.Digest, after.Config.Digest, "lossless zstd:chunked leaves the config (and its diff_ids) as it was")
	for _, l := range after.Layers {
		assert.Equal(t, ocispec.MediaTypeImageLayerZstd, l.MediaType)
		assert.NotEmpty(t, l.Annotations[labels.ZstdChunkedManifestChecksumAnnotation])
		assert.NotEmpty(t, l.Annotations[labels.ZstdChunkedManifestPositionAnnotation])
	}
	// Converting again: cache hits rebuild the same descriptors, annotations included.
	again, err := f.Conv.ConvertImage(f.Ctx, f.Store.ImageStore(), "example.com/app:v1", "example.com/app:zc2", converter.ImageOptions{Layers: converter.Every(conv)})
	require.NoError(t, err)
	assert.Equal(t, res.Image.Target.Digest, again.Image.Target.Digest)
	for _, l := range again.Layers {
		assert.Equal(t, converter.StateCached, l.State)
	}
	// And a zstd:chunked layer is kept by a second zstd:chunked conversion.
	kept, err := f.Conv.ConvertLayer(f.Ctx, conv, after.Layers[0], nil)
	require.NoError(t, err)
	assert.Equal(t, converter.StateKept, kept.State)
}

func TestZstdChunkedVariantNames(t *testing.T) {
	for _, tc := range []struct {
		opts stargz.ZstdChunkedOptions
		want string
	}{
		{stargz.DefaultZstdChunkedOptions(), "zstdchunked"},
		{stargz.ZstdChunkedOptions{CompressionLevel: 19}, "zstdchunked.level-19"},
		{stargz.ZstdChunkedOptions{CompressionLevel: 3, ChunkSize: 4096}, "zstdchunked.chunk-4096"},
	} {
		c, err := stargz.NewZstdChunked(tc.opts)
		require.NoError(t, err)
		assert.Equal(t, tc.want, c.Variant())
	}
}
