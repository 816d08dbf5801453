package main

import (
	"path/filepath"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/internal/imagegen"
)

// A layer with a sparse file converts, and every place says it is not
// lossless; --require-lossless and the expansion limit refuse it.
func TestCLISparseLayer(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	img := imagegen.Image{Name: "example.com/sparse:v1", Layers: []imagegen.Layer{
		{MediaType: ocispec.MediaTypeImageLayerGzip, Blob: imagegen.Compress(imagegen.TarBytes(convertertest.Cases()["hard links"]), "gzip")},
		{MediaType: ocispec.MediaTypeImageLayerGzip, Blob: imagegen.Compress(convertertest.SparseTar(8<<20), "gzip")},
	}}
	archive := filepath.Join(dir, "sparse.tar")
	require.NoError(t, imagegen.WriteOCIArchiveFile(archive, img))
	out, err := lazyconv(t, root, "image", "import", archive)
	require.NoError(t, err, out)

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"required lossless", []string{"--require-lossless"}, "cannot be converted losslessly"},
		{"beyond the expansion limit", nil, "max_expanded_bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"image", "convert", "--estargz", "--oci"}, tc.args...)
			global := []string{}
			if tc.args == nil {
				global = []string{"--max-expanded-bytes", "1048576"}
			}
			out, err := lazyconv(t, root, append(global, append(args, "example.com/sparse:v1", "example.com/sparse:refused")...)...)
			require.Error(t, err, out)
			assert.Contains(t, err.Error(), tc.want)
			assert.Contains(t, err.Error(), "sparse")
		})
	}

	out, err = lazyconv(t, root, "image", "convert", "--estargz", "--oci", "example.com/sparse:v1", "example.com/sparse:esgz")
	require.NoError(t, err, out)
	assert.Contains(t, out, "not lossless: sparse files written as regular files: sparse", "the progress line and the summary say so")
	out, err = lazyconv(t, root, "image", "verify", "example.com/sparse:esgz")
	require.NoError(t, err, out)
	assert.Contains(t, out, "2 lazy-pull layers verified")
}
