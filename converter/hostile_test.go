package converter_test

import (
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/converter/stargz"
	"github.com/lazyconv/lazyconv/internal/imagegen"
)

func storeState(t *testing.T, f *convertertest.Fixture) []string {
	return convertertest.StoreState(t, f.Ctx, f.CS, f.Store.ImageStore(), f.Store.LeaseManager())
}

func TestHostileImagesAreRefusedAndChangeNothing(t *testing.T) {
	esgz, err := stargz.NewEStargz(stargz.DefaultEStargzOptions())
	require.NoError(t, err)
	zc, err := stargz.NewZstdChunked(stargz.DefaultZstdChunkedOptions())
	require.NoError(t, err)
	optimized, err := stargz.NewPrioritizedEStargz(stargz.DefaultPrioritizedOptions())
	require.NoError(t, err)
	for _, h := range convertertest.HostileImages(8 << 20) {
		for format, lc := range map[string]converter.LayerConverter{"estargz": esgz, "zstdchunked": zc, "optimized": optimized} {
			t.Run(h.Name+"/"+format, func(t *testing.T) {
				f := convertertest.NewFixture(t)
				mdesc, err := imagegen.Store(f.Ctx, f.CS, f.Store.ImageStore(), h.Image)
				require.NoError(t, err)
				if h.DeleteLayer >= 0 {
					m := convertertest.ReadJSON[ocispec.Manifest](t, f, mdesc)
					require.NoError(t, f.CS.Delete(f.Ctx, m.Layers[h.DeleteLayer].Digest))
				}
				f.GC(t)
				before := storeState(t, f)
				_, err = f.Conv.ConvertImage(f.Ctx, f.Store.ImageStore(), h.Image.Name, h.Image.Name+"-converted",
					converter.ImageOptions{Layers: converter.Every(lc), Limits: h.Limits})
				require.Error(t, err, "a hostile image converted")
				assert.True(t, h.Class(err), "wrong class: %v", err)
				t.Log(err)
				f.GC(t)
				assert.Equal(t, before, storeState(t, f), "after GC the store is as it was")
				_, err = f.Store.ImageStore().Get(f.Ctx, h.Image.Name+"-converted")
				assert.Error(t, err)
			})
		}
	}
}

// An artifact's layers are no filesystem layers: they pass through, reported kept.
func TestArtifactLayersPassThrough(t *testing.T) {
	f := convertertest.NewFixture(t)
	img := imagegen.Image{Name: "artifact:v1", Layers: []imagegen.Layer{{MediaType: "application/vnd.example.unknown+gzip", Blob: []byte("payload"), DiffID: "sha256:00"}}}
	img.EditManifest = func(m *ocispec.Manifest) { m.Config.MediaType = "application/vnd.example.config.v1+json" }
	src, err := imagegen.Store(f.Ctx, f.CS, f.Store.ImageStore(), img)
	require.NoError(t, err)
	lc, err := stargz.NewEStargz(stargz.DefaultEStargzOptions())
	require.NoError(t, err)
	res, err := f.Conv.ConvertImage(f.Ctx, f.Store.ImageStore(), "artifact:v1", "artifact:esgz", converter.ImageOptions{Layers: converter.Every(lc)})
	require.NoError(t, err)
	assert.Equal(t, src.Digest, res.Image.Target.Digest, "the artifact is unchanged")
	require.Len(t, res.Layers, 1)
	assert.Equal(t, converter.StateKept, res.Layers[0].State)
}
