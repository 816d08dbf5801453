package integration

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/platforms"
	"github.com/containerd/stargz-snapshotter/estargz"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter/stargz"
	"github.com/lazyconv/lazyconv/internal/imagegen"
)

// testImage is an image archive and the tars of its layers.
type testImage struct {
	name    string
	archive string
	tars    [][]byte
}

var epoch = time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)

// newTestImage writes a three-layer image (gzip, zstd, uncompressed) named name.
// bigLayers makes each layer hold bigLayers bytes of real GOROOT files, so
// that converting it takes a while.
func newTestImage(t *testing.T, name string, bigLayers int64) testImage {
	t.Helper()
	rnd := rand.New(rand.NewSource(7))
	random := make([]byte, 256<<10)
	rnd.Read(random)
	tars := [][]byte{
		imagegen.TarBytes([]imagegen.Entry{
			{Header: tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: epoch}},
			{Header: tar.Header{Name: "etc/os-release", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: epoch}, Body: []byte("ID=lazyconv\n")},
			{Header: tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: epoch}},
			{Header: tar.Header{Name: "bin/tool", Typeflag: tar.TypeReg, Mode: 0o755, ModTime: epoch}, Body: random},
			{Header: tar.Header{Name: "bin/alias", Typeflag: tar.TypeLink, Linkname: "bin/tool", ModTime: epoch}},
		}),
		imagegen.TarBytes([]imagegen.Entry{
			{Header: tar.Header{Name: "data/text", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: epoch}, Body: bytes.Repeat([]byte("lazy pulling\n"), 50000)},
			{Header: tar.Header{Name: "data/link", Typeflag: tar.TypeSymlink, Linkname: "text", ModTime: epoch}},
		}),
		imagegen.TarBytes([]imagegen.Entry{
			{Header: tar.Header{Name: "etc/os-release", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: epoch}, Body: []byte("ID=lazyconv\nVERSION=2\n")},
		}),
	}
	if bigLayers > 0 {
		for i := range tars {
			var b bytes.Buffer
			require.NoError(t, imagegen.WriteGorootTar(&b, fmt.Sprintf("layer%d-", i), bigLayers))
			tars[i] = b.Bytes()
		}
	}
	img := imagegen.Image{Name: name}
	for i, comp := range []string{"gzip", "zstd", ""} {
		mt := ocispec.MediaTypeImageLayer
		if comp != "" {
			mt += "+" + comp
		}
		img.Layers = append(img.Layers, imagegen.Layer{MediaType: mt, Blob: imagegen.Compress(tars[i], comp)})
	}
	p := filepath.Join(t.TempDir(), "image.tar")
	require.NoError(t, imagegen.WriteOCIArchiveFile(p, img))
	return testImage{name: name, archive: p, tars: tars}
}

// assertConvertedImage checks that ref, in cs, is eStargz whose layers unpack
// to the test image's tars byte for byte and verify against their TOC.
func assertConvertedImage(t *testing.T, ctx context.Context, cs content.Store, is images.Store, ref string, want testImage) {
	t.Helper()
	img, err := is.Get(ctx, ref)
	require.NoError(t, err)
	m, err := images.Manifest(ctx, cs, img.Target, platforms.All)
	require.NoError(t, err)
	require.Len(t, m.Layers, len(want.tars))
	for i, l := range m.Layers {
		assert.Equal(t, ocispec.MediaTypeImageLayerGzip, l.MediaType)
		_, err := stargz.Verify(ctx, cs, l)
		require.NoError(t, err, "layer %d", i)
		blob, err := content.ReadBlob(ctx, cs, l)
		require.NoError(t, err)
		rc, err := estargz.Unpack(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))), new(estargz.GzipDecompressor))
		require.NoError(t, err)
		got, err := io.ReadAll(rc)
		require.NoError(t, err)
		assert.True(t, bytes.Equal(want.tars[i], got), "layer %d unpacks to its source tar byte for byte", i)
	}
}

// contentInfo is content.Info, named for Walk callbacks.
type contentInfo = content.Info
