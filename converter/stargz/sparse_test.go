package stargz_test

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/errdefs"
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

// gnuSparseTar is a hand-made old-GNU sparse file ('S') of 1 MiB, to which
// Go's reader gives its logical size.
func gnuSparseTar(t *testing.T) []byte {
	t.Helper()
	raw := convertertest.SparseTar(1 << 20)
	hdr, err := tar.NewReader(bytes.NewReader(raw)).Next()
	require.NoError(t, err)
	require.Equal(t, int64(1<<20), hdr.Size)
	return raw
}

// gnuTarSparse returns tars GNU tar writes with --sparse, by sparse format,
// of a directory holding a 50 MiB file with data at 1 MiB and 30 MiB and holes
// elsewhere, plus a regular file. It skips when tar or holes are missing.
func gnuTarSparse(t *testing.T) map[string][]byte {
	t.Helper()
	if _, err := exec.LookPath("tar"); err != nil {
		t.Skip("GNU tar is not installed: its sparse formats are not exercised")
	}
	dir := t.TempDir()
	big, err := os.Create(filepath.Join(dir, "disk.img"))
	require.NoError(t, err)
	require.NoError(t, big.Truncate(50<<20))
	for _, off := range []int64{1 << 20, 30 << 20} {
		_, err := big.WriteAt(bytes.Repeat([]byte("data"), 1024), off)
		require.NoError(t, err)
	}
	require.NoError(t, big.Close())
	require.NoError(t, os.WriteFile(filepath.Join(dir, "plain.txt"), []byte("plain\n"), 0o644))
	out := map[string][]byte{}
	for name, args := range map[string][]string{
		"old GNU": {"--format=gnu"},
		"PAX 0.0": {"--format=posix", "--sparse-version=0.0"},
		"PAX 0.1": {"--format=posix", "--sparse-version=0.1"},
		"PAX 1.0": {"--format=posix", "--sparse-version=1.0"},
	} {
		cmd := exec.Command("tar", append(append([]string{"--sparse", "-C", dir, "-cf", "-"}, args...), "disk.img", "plain.txt")...)
		b, err := cmd.Output()
		require.NoError(t, err, name)
		if len(b) > 40<<20 {
			t.Skipf("the temporary file system keeps no holes (tar wrote %d bytes): sparse tars are not exercised", len(b))
		}
		out[name] = b
	}
	return out
}

// unpacked is the tar a converted layer decompresses to.
func unpacked(t *testing.T, f *convertertest.Fixture, desc ocispec.Descriptor) io.Reader {
	t.Helper()
	blob, err := content.ReadBlob(f.Ctx, f.CS, desc)
	require.NoError(t, err)
	r, err := compression.DecompressStream(bytes.NewReader(blob))
	require.NoError(t, err)
	return r
}

func TestSparseLayersConvertNotLossless(t *testing.T) {
	layers := gnuTarSparse(t)
	layers["old GNU, hand-made"] = gnuSparseTar(t)
	esgz, err := stargz.NewEStargz(stargz.DefaultEStargzOptions())
	require.NoError(t, err)
	zc, err := stargz.NewZstdChunked(stargz.DefaultZstdChunkedOptions())
	require.NoError(t, err)
	optimized, err := stargz.NewPrioritizedEStargz(stargz.PrioritizedOptions{
		EStargzOptions: stargz.DefaultEStargzOptions(), Files: []string{"plain.txt"}})
	require.NoError(t, err)
	for name, tarball := range layers {
		for format, lc := range map[string]converter.LayerConverter{"estargz": esgz, "zstdchunked": zc, "optimized": optimized} {
			t.Run(name+"/"+format, func(t *testing.T) {
				f := convertertest.NewFixture(t)
				src := putLayer(t, f, tarball, "gzip")
				res, err := f.Conv.ConvertLayer(f.Ctx, lc, src, nil)
				require.NoError(t, err)
				require.Len(t, res.NotLossless, 1)
				sparseName := "disk.img"
				if name == "old GNU, hand-made" {
					sparseName = "sparse"
				}
				assert.Equal(t, sparseName, res.NotLossless[0])
				assert.Contains(t, res.Desc.Annotations[labels.NotLosslessAnnotation], sparseName)
				assert.NotEqual(t, digest.FromBytes(tarball), res.DiffID, "the rewritten layer has its own diffID")
				want := convertertest.RegularFiles(t, bytes.NewReader(tarball))
				assert.Equal(t, want, convertertest.RegularFiles(t, unpacked(t, f, res.Desc)), "every file reads back equal, holes as zeros")

				// A cache hit says the same.
				again, err := f.Conv.ConvertLayer(f.Ctx, lc, src, nil)
				require.NoError(t, err)
				if again.State == converter.StateCached {
					assert.NotEmpty(t, again.NotLossless)
				}
			})
		}
	}
}

func TestRequireLosslessRefusesSparseLayers(t *testing.T) {
	f := convertertest.NewFixture(t)
	sparse := imagegen.Layer{MediaType: ocispec.MediaTypeImageLayerGzip, Blob: imagegen.Compress(gnuSparseTar(t), "gzip")}
	plain := imagegen.Layer{MediaType: ocispec.MediaTypeImageLayerGzip,
		Blob: imagegen.Compress(imagegen.TarBytes(convertertest.Cases()["regular files and dirs"]), "gzip")}
	_, err := imagegen.Store(f.Ctx, f.CS, f.Store.ImageStore(), imagegen.Image{Name: "sparse:v1", Layers: []imagegen.Layer{plain, sparse}})
	require.NoError(t, err)
	lc, err := stargz.NewEStargz(stargz.DefaultEStargzOptions())
	require.NoError(t, err)
	f.GC(t)
	before := f.ContentState(t)
	_, err = f.Conv.ConvertImage(f.Ctx, f.Store.ImageStore(), "sparse:v1", "sparse:esgz",
		converter.ImageOptions{Layers: converter.Every(lc), RequireLossless: true})
	require.Error(t, err)
	assert.True(t, errdefs.IsInvalidArgument(err), "%v", err)
	assert.Contains(t, err.Error(), "sparse")
	f.GC(t)
	assert.Equal(t, before, f.ContentState(t), "nothing is left after GC")

	// Without the requirement the image converts, both layers.
	res, err := f.Conv.ConvertImage(f.Ctx, f.Store.ImageStore(), "sparse:v1", "sparse:esgz", converter.ImageOptions{Layers: converter.Every(lc)})
	require.NoError(t, err)
	require.Len(t, res.Layers, 2)
	assert.Empty(t, res.Layers[0].NotLossless)
	assert.Equal(t, []string{"sparse"}, res.Layers[1].NotLossless)
	// And a cached not-lossless layer is refused too when lossless is required.
	_, err = f.Conv.ConvertImage(f.Ctx, f.Store.ImageStore(), "sparse:v1", "sparse:esgz2",
		converter.ImageOptions{Layers: converter.Every(lc), RequireLossless: true})
	assert.True(t, errdefs.IsInvalidArgument(err), "%v", err)
}

// A sparse file's logical size is bounded: beyond the limit, a clear error.
func TestSparseExpansionIsBounded(t *testing.T) {
	f := convertertest.NewFixture(t)
	lc, err := stargz.NewEStargz(stargz.DefaultEStargzOptions())
	require.NoError(t, err)
	src := putLayer(t, f, gnuSparseTar(t), "gzip")
	before := f.ContentState(t)
	ctx := converter.WithLimits(f.Ctx, converter.Limits{MaxExpandedBytes: 512 << 10})
	_, err = f.Conv.ConvertLayer(ctx, lc, src, nil)
	require.Error(t, err)
	assert.True(t, errdefs.IsInvalidArgument(err), "%v", err)
	assert.Contains(t, err.Error(), "max_expanded_bytes")
	assert.Equal(t, before, f.ContentState(t))
}

// The lossless pass stops at a sparse file, but the source's inspection,
// made in line by that pass's parse, still covers every entry after it: a
// path climbing out of the layer root behind a sparse file is refused, not
// rewritten into the output.
func TestEntriesAfterASparseFileAreInspected(t *testing.T) {
	var tarball bytes.Buffer
	sparse := convertertest.SparseTar(1 << 20)
	tarball.Write(sparse[:len(sparse)-1024]) // without its end-of-archive blocks
	tw := tar.NewWriter(&tarball)
	require.NoError(t, tw.WriteHeader(&tar.Header{Name: "../../etc/cron.d/x", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1}))
	_, err := tw.Write([]byte("x"))
	require.NoError(t, err)
	require.NoError(t, tw.Close())
	esgz, err := stargz.NewEStargz(stargz.DefaultEStargzOptions())
	require.NoError(t, err)
	zc, err := stargz.NewZstdChunked(stargz.DefaultZstdChunkedOptions())
	require.NoError(t, err)
	for format, lc := range map[string]converter.LayerConverter{"estargz": esgz, "zstdchunked": zc} {
		t.Run(format, func(t *testing.T) {
			f := convertertest.NewFixture(t)
			src := putLayer(t, f, tarball.Bytes(), "gzip")
			_, err := f.Conv.ConvertLayer(f.Ctx, lc, src, nil)
			require.Error(t, err)
			assert.True(t, errdefs.IsInvalidArgument(err), "%v", err)
			assert.Contains(t, err.Error(), "climbs out of the layer root")
		})
	}
}
