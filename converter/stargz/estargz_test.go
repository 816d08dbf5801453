package stargz_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"strconv"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
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

func TestEStargzLosslessRoundTrip(t *testing.T) {
	f := convertertest.NewFixture(t)
	conv, err := stargz.NewEStargz(stargz.EStargzOptions{CompressionLevel: 9, ChunkSize: 1 << 20})
	require.NoError(t, err)
	for name, entries := range convertertest.Cases() {
		for _, comp := range []string{"gzip", "zstd", ""} {
			t.Run(name+"/"+comp, func(t *testing.T) {
				tarball := imagegen.TarBytes(entries)
				src := putLayer(t, f, tarball, comp)
				res, err := f.Conv.ConvertLayer(f.Ctx, conv, src, nil)
				require.NoError(t, err)
				require.Equal(t, converter.StateCommitted, res.State)
				assert.Equal(t, ocispec.MediaTypeImageLayerGzip, res.Desc.MediaType)
				assertEStargzOf(t, f.CS, res.Desc, tarball)
				info, err := f.CS.Info(f.Ctx, res.Desc.Digest)
				require.NoError(t, err)
				assert.Equal(t, res.DiffID.String(), info.Labels[labels.Uncompressed])
				assert.Empty(t, labels.DistributionSources(info), "no labels copied from the source")
			})
		}
	}
}

// putLayer stores a tar as an OCI layer with the given compression, as
// pulled from a registry (converted blobs must not inherit that label).
func putLayer(t testing.TB, f *convertertest.Fixture, tarball []byte, comp string) ocispec.Descriptor {
	t.Helper()
	blob := imagegen.Compress(tarball, comp)
	mt := ocispec.MediaTypeImageLayer
	if comp != "" {
		mt += "+" + comp
	}
	return f.PutBlob(t, blob, mt, map[string]string{labels.DistributionSourcePrefix + "example.com": "library/src"})
}

// assertEStargzOf checks that desc is eStargz whose unpacked tar is exactly
// tarball, whose TOC verifies against its annotation, and whose every file
// reads back as in the source.
func assertEStargzOf(t *testing.T, cs content.Provider, desc ocispec.Descriptor, tarball []byte) {
	t.Helper()
	ctx := t.Context()
	ctx = namespaces.WithNamespace(ctx, "test")
	ra, err := cs.ReaderAt(ctx, desc)
	require.NoError(t, err)
	defer ra.Close()
	sr := io.NewSectionReader(ra, 0, ra.Size())
	rc, err := estargz.Unpack(sr, new(estargz.GzipDecompressor))
	require.NoError(t, err)
	unpacked, err := io.ReadAll(rc)
	require.NoError(t, err)
	require.True(t, bytes.Equal(tarball, unpacked), "estargz.Unpack must yield the source tar byte for byte (%d vs %d bytes)", len(tarball), len(unpacked))

	// The uncompressed-size annotation is the size of the whole blob decompressed.
	zr, err := gzip.NewReader(io.NewSectionReader(ra, 0, ra.Size()))
	require.NoError(t, err)
	total, err := io.Copy(io.Discard, zr)
	require.NoError(t, err)
	assert.Equal(t, strconv.FormatInt(total, 10), desc.Annotations[labels.UncompressedSizeAnnotation])

	r, err := estargz.Open(sr)
	require.NoError(t, err)
	tocDigest, err := digest.Parse(desc.Annotations[labels.TOCDigestAnnotation])
	require.NoError(t, err)
	_, err = r.VerifyTOC(tocDigest)
	require.NoError(t, err)

	tr := tar.NewReader(bytes.NewReader(tarball))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		if h.Typeflag != tar.TypeReg {
			continue
		}
		want, err := io.ReadAll(tr)
		require.NoError(t, err)
		fr, err := r.OpenFile(h.Name)
		require.NoError(t, err, h.Name)
		got := make([]byte, fr.Size())
		_, err = fr.ReadAt(got, 0) // one read: estargz decompresses a chunk from its start per read
		if err == io.EOF {
			err = nil
		}
		require.NoError(t, err)
		assert.True(t, bytes.Equal(want, got), "content of %s", h.Name)
	}
}

func TestEStargzKeepsEStargzLayers(t *testing.T) {
	f := convertertest.NewFixture(t)
	conv, err := stargz.NewEStargz(stargz.DefaultEStargzOptions())
	require.NoError(t, err)
	tarball := imagegen.TarBytes(convertertest.Cases()["symlinks"])
	first, err := f.Conv.ConvertLayer(f.Ctx, conv, putLayer(t, f, tarball, "gzip"), nil)
	require.NoError(t, err)

	again := first.Desc
	again.Annotations = nil // as a registry that dropped annotations would give it
	res, err := f.Conv.ConvertLayer(f.Ctx, conv, again, nil)
	require.NoError(t, err)
	assert.Equal(t, converter.StateKept, res.State)
	assert.Equal(t, first.Desc.Digest, res.Desc.Digest)
	assert.Equal(t, first.Desc.Annotations[labels.TOCDigestAnnotation], res.Desc.Annotations[labels.TOCDigestAnnotation])
	require.NoError(t, f.Conv.Link(f.Ctx, res))
	is, err := stargz.IsEStargz(f.Ctx, f.CS, first.Desc.Digest)
	require.NoError(t, err)
	assert.True(t, is)
}

// The variant keys of existing caches stay what they were before options
// became one struct: same options, same label. Level 9 with libdeflate is
// the baseline (unnamed); klauspost's pure-Go output is named, in every
// build, and so is libdeflate's default level chosen since (5).
func TestEStargzVariantNames(t *testing.T) {
	cases := []struct {
		opts stargz.EStargzOptions
		want string
	}{
		{stargz.EStargzOptions{CompressionLevel: 6, Deflate: stargz.DeflateGo}, "estargz.deflate-go.level-6"},
		{stargz.EStargzOptions{CompressionLevel: 1, ChunkSize: 1024, Deflate: stargz.DeflateGo}, "estargz.chunk-1024.deflate-go.level-1"},
		{stargz.EStargzOptions{CompressionLevel: 9, Deflate: stargz.DeflateGo}, "estargz.deflate-go"},
	}
	if stargz.DefaultDeflate() == stargz.DeflateLibdeflate {
		cases = append(cases, []struct {
			opts stargz.EStargzOptions
			want string
		}{
			{stargz.DefaultEStargzOptions(), "estargz.level-5"},
			{stargz.EStargzOptions{CompressionLevel: 9}, "estargz"},
			{stargz.EStargzOptions{CompressionLevel: 6}, "estargz.level-6"},
			{stargz.EStargzOptions{CompressionLevel: 1, ChunkSize: 1024}, "estargz.chunk-1024.level-1"},
			{stargz.EStargzOptions{CompressionLevel: -2}, "estargz.level--2"},
		}...)
	} else {
		cases = append(cases, struct {
			opts stargz.EStargzOptions
			want string
		}{stargz.DefaultEStargzOptions(), "estargz.deflate-go"})
		_, err := stargz.NewEStargz(stargz.EStargzOptions{CompressionLevel: 9, Deflate: stargz.DeflateLibdeflate})
		assert.True(t, errdefs.IsUnavailable(err), "libdeflate asked of a build without it: %v", err)
	}
	for _, tc := range cases {
		c, err := stargz.NewEStargz(tc.opts)
		require.NoError(t, err)
		assert.Equal(t, tc.want, c.Variant())
	}
}
