package converter_test

import (
	"bytes"
	"context"
	"io"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	nydusconv "github.com/containerd/nydus-snapshotter/pkg/converter"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/internal/imagegen"
	"github.com/lazyconv/lazyconv/labels"
)

func TestNydusWithoutBuilderIsUnavailableBeforeAnyWork(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nydus-image")
	b := converter.ProbeNydusBuilder(t.Context(), missing)
	assert.False(t, b.Found)
	assert.Contains(t, b.Reason, missing)

	for _, tc := range []struct {
		name string
		make func() error
	}{
		{"layer converter", func() error { _, err := converter.NewNydus(converter.NydusOptions{Builder: b}); return err }},
		{"merge hook", func() error { _, err := converter.NydusMergeHook(converter.NydusOptions{Builder: b}); return err }},
		{"never probed", func() error { _, err := converter.NewNydus(converter.NydusOptions{}); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.make()
			require.Error(t, err)
			assert.True(t, errdefs.IsUnavailable(err), "%v", err)
			assert.Contains(t, err.Error(), "nydus-image")
		})
	}
}

func TestNydusOptionsAreValidated(t *testing.T) {
	found := converter.NydusBuilder{Path: "/usr/bin/nydus-image", Found: true}
	for _, opts := range []converter.NydusOptions{
		{Builder: found, FsVersion: "7"},
		{Builder: found, Compressor: "brotli"},
	} {
		_, err := converter.NewNydus(opts)
		require.Error(t, err)
		assert.True(t, errdefs.IsInvalidArgument(err), "%v", err)
	}
	c, err := converter.NewNydus(converter.NydusOptions{Builder: found})
	require.NoError(t, err)
	assert.Equal(t, "nydus", c.Variant())
	assert.Equal(t, nydusconv.MediaTypeNydusBlob, c.MediaType(ocispec.MediaTypeImageLayerGzip))
	c, err = converter.NewNydus(converter.NydusOptions{Builder: found, FsVersion: "5", Compressor: "none"})
	require.NoError(t, err)
	assert.Equal(t, "nydus.compressor-none.fs-5", c.Variant())
}

// The image walk's append step, which nydus's bootstrap merge uses: the
// appended layer comes last, with its diffID in the config and its GC label
// on the manifest.
func TestAppendedLayerRewritesManifestAndConfig(t *testing.T) {
	f := newFixture(t)
	src := testImage(t, f, "example.com/app:v1", false)
	var extra ocispec.Descriptor
	extraDiffID := digest.FromString("bootstrap tar")
	hook := func(ctx context.Context, cs content.Store, layers []ocispec.Descriptor, oci bool) (*ocispec.Descriptor, digest.Digest, error) {
		assert.True(t, oci)
		assert.Len(t, layers, 3, "the hook sees the converted layers")
		blob := imagegen.Compress([]byte("bootstrap tar"), "gzip")
		extra = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(blob), Size: int64(len(blob)),
			Annotations: map[string]string{"containerd.io/snapshot/nydus-bootstrap": "true"}}
		return &extra, extraDiffID, content.WriteBlob(ctx, cs, "bootstrap", bytes.NewReader(blob), extra)
	}
	lc, err := converter.NewEStargz()
	require.NoError(t, err)
	res, err := f.conv.ConvertImage(f.ctx, f.store.ImageStore(), "example.com/app:v1", "example.com/app:merged",
		converter.ImageOptions{Layer: lc, AppendLayer: hook})
	require.NoError(t, err)
	m := readJSON[ocispec.Manifest](t, f, res.Image.Target)
	require.Len(t, m.Layers, 4)
	assert.Equal(t, extra.Digest, m.Layers[3].Digest)
	cfg := readJSON[ocispec.Image](t, f, m.Config)
	require.Len(t, cfg.RootFS.DiffIDs, 4)
	assert.Equal(t, extraDiffID, cfg.RootFS.DiffIDs[3])
	before := readJSON[ocispec.Image](t, f, readJSON[ocispec.Manifest](t, f, src).Config)
	assert.NotEqual(t, before.RootFS.DiffIDs[0], cfg.RootFS.DiffIDs[0], "converted layers have their new diffIDs")
	info, err := f.cs.Info(f.ctx, res.Image.Target.Digest)
	require.NoError(t, err)
	assert.Equal(t, extra.Digest.String(), info.Labels["containerd.io/gc.ref.content.l.3"])
	// And the appended blob lives with the image.
	f.gc(t)
	_, err = f.cs.Info(f.ctx, extra.Digest)
	require.NoError(t, err)
}

// TestNydusEndToEnd packs and merges with the real builder.
func TestNydusEndToEnd(t *testing.T) {
	path, err := exec.LookPath(converter.NydusBuilderName)
	if err != nil {
		t.Skip("no nydus-image on PATH (no Debian package ships it): nydus packing and merging are not exercised here")
	}
	f := newFixture(t)
	testImage(t, f, "example.com/app:v1", false)
	opts := converter.NydusOptions{Builder: converter.ProbeNydusBuilder(t.Context(), path), WorkDir: t.TempDir()}
	lc, err := converter.NewNydus(opts)
	require.NoError(t, err)
	hook, err := converter.NydusMergeHook(opts)
	require.NoError(t, err)
	res, err := f.conv.ConvertImage(f.ctx, f.store.ImageStore(), "example.com/app:v1", "example.com/app:nydus",
		converter.ImageOptions{Layer: lc, AppendLayer: hook, DockerToOCI: true})
	require.NoError(t, err)
	m := readJSON[ocispec.Manifest](t, f, res.Image.Target)
	require.Len(t, m.Layers, 4)
	for _, l := range m.Layers[:3] {
		assert.Equal(t, nydusconv.MediaTypeNydusBlob, l.MediaType)
	}
	boot := m.Layers[3]
	assert.Equal(t, "true", boot.Annotations[nydusconv.LayerAnnotationNydusBootstrap])
	info, err := f.cs.Info(f.ctx, boot.Digest)
	require.NoError(t, err)
	assert.NotEmpty(t, info.Labels[labels.Uncompressed])
	ra, err := f.cs.ReaderAt(f.ctx, boot)
	require.NoError(t, err)
	defer ra.Close()
	_, err = io.Copy(io.Discard, io.NewSectionReader(ra, 0, ra.Size()))
	require.NoError(t, err)
}
