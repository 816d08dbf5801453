//go:build cgo

package main

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/internal/imagegen"
	"github.com/lazyconv/lazyconv/localstore"
)

// `image convert --soci` makes a SOCI-enabled image: the source's layers,
// untouched, in an OCI manifest annotated with its SOCI index, which the
// image index lists beside it; a layer below the minimum size gets no zTOC.
func TestCLISOCI(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	rnd := rand.New(rand.NewPCG(3, 4))
	big := make([]byte, 2<<20)
	for i := range big {
		big[i] = byte(rnd.IntN(256))
	}
	entry := func(name string, body []byte) imagegen.Entry {
		e := imagegen.Entry{Body: body}
		e.Header.Name, e.Header.Typeflag, e.Header.Mode = name, '0', 0o644
		return e
	}
	img := imagegen.Image{Name: "example.com/soci/app:v1", Layers: []imagegen.Layer{
		{MediaType: ocispec.MediaTypeImageLayerGzip, Blob: imagegen.Compress(imagegen.TarBytes([]imagegen.Entry{entry("big", big)}), "gzip")},
		{MediaType: ocispec.MediaTypeImageLayerGzip, Blob: imagegen.Compress(imagegen.TarBytes([]imagegen.Entry{entry("small", []byte("s"))}), "gzip")},
	}}
	archive := filepath.Join(dir, "app.tar")
	require.NoError(t, imagegen.WriteOCIArchiveFile(archive, img))
	out, err := lazyconv(t, root, "image", "import", archive)
	require.NoError(t, err, out)
	out, err = lazyconv(t, root, "image", "convert", "--soci", "--soci-min-layer-size", "65536", "--soci-span-size", "1048576",
		"example.com/soci/app:v1", "example.com/soci/app:soci")
	require.NoError(t, err, out)
	// Deterministic: converting again gives the same image (checked below).
	out, err = lazyconv(t, root, "image", "convert", "--soci", "--soci-min-layer-size", "65536", "--soci-span-size", "1048576",
		"example.com/soci/app:v1", "example.com/soci/app:soci2")
	require.NoError(t, err, out)
	// verify checks the zTOC against its layer (each span inflated from its
	// checkpoint, the file table); the small layer has none to check.
	out, err = lazyconv(t, root, "image", "verify", "example.com/soci/app:soci")
	require.NoError(t, err, out)
	assert.Contains(t, out, "example.com/soci/app:soci: 1 lazy-pull layers verified")
	assert.Regexp(t, `sha256:\S+\s+sha256:\S+\s+2\s+1\s+`, out, "two spans (each ends at the first deflate block boundary past 1 MiB), one file")

	ctx := namespaces.WithNamespace(context.Background(), "default")
	st, err := localstore.Open(ctx, root)
	require.NoError(t, err)
	defer st.Close()
	src, err := st.ImageStore().Get(ctx, "example.com/soci/app:v1")
	require.NoError(t, err)
	dst, err := st.ImageStore().Get(ctx, "example.com/soci/app:soci")
	require.NoError(t, err)
	require.Equal(t, ocispec.MediaTypeImageIndex, dst.Target.MediaType)
	read := func(d ocispec.Descriptor, v any) {
		b, err := content.ReadBlob(ctx, st.ContentStore(), d)
		require.NoError(t, err)
		require.NoError(t, json.Unmarshal(b, v))
	}
	var idx ocispec.Index
	read(dst.Target, &idx)
	require.Len(t, idx.Manifests, 2, "the manifest and its SOCI index")
	var srcManifest, manifest, sociIndex ocispec.Manifest
	read(src.Target, &srcManifest)
	read(idx.Manifests[0], &manifest)
	assert.Equal(t, srcManifest.Layers, manifest.Layers, "the layers are the source's")
	assert.Equal(t, "application/vnd.amazon.soci.index.v2+json", idx.Manifests[1].ArtifactType)
	assert.Equal(t, idx.Manifests[1].Digest.String(), manifest.Annotations["com.amazon.soci.index-digest"])
	assert.Equal(t, idx.Manifests[0].Digest.String(), idx.Manifests[1].Annotations["com.amazon.soci.image-manifest-digest"])
	require.NotNil(t, idx.Manifests[1].Platform)
	read(idx.Manifests[1], &sociIndex)
	require.Len(t, sociIndex.Layers, 1, "one zTOC: the small layer has none")
	assert.Equal(t, srcManifest.Layers[0].Digest.String(), sociIndex.Layers[0].Annotations["com.amazon.soci.image-layer-digest"])
	assert.Equal(t, "1048576", sociIndex.Layers[0].Annotations["com.amazon.soci.span-size"])

	again, err := st.ImageStore().Get(ctx, "example.com/soci/app:soci2")
	require.NoError(t, err)
	assert.Equal(t, dst.Target.Digest, again.Target.Digest)
}
