package stargz_test

import (
	"bytes"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	esgzconvert "github.com/containerd/stargz-snapshotter/nativeconverter/estargz"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/converter/stargz"
	"github.com/lazyconv/lazyconv/internal/imagegen"
)

// benchLayer is a gzip'd tar of 32 MiB of real GOROOT files, made once.
var benchLayer struct {
	blob     []byte
	tarBytes int64
}

func loadBenchLayer(b *testing.B) ([]byte, int64) {
	if benchLayer.blob == nil {
		var tarball bytes.Buffer
		require.NoError(b, imagegen.WriteGorootTar(&tarball, "go", 32<<20))
		benchLayer.tarBytes = int64(tarball.Len())
		benchLayer.blob = imagegen.Compress(tarball.Bytes(), "gzip")
	}
	return benchLayer.blob, benchLayer.tarBytes
}

// BenchmarkEStargzLayer converts one layer with lazyconv and with
// stargz-snapshotter's nativeconverter (what nerdctl uses), same level, same
// input; hack/benchreport prints the ratio on larger inputs.
func BenchmarkEStargzLayer(b *testing.B) {
	blob, tarBytes := loadBenchLayer(b)
	b.Run("lazyconv", func(b *testing.B) {
		lc, err := stargz.NewEStargz(stargz.DefaultEStargzOptions())
		require.NoError(b, err)
		b.SetBytes(tarBytes)
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			f := convertertest.NewFixture(b)
			desc := f.PutBlob(b, blob, ocispec.MediaTypeImageLayerGzip, nil)
			b.StartTimer()
			_, err := f.Conv.ConvertLayer(f.Ctx, lc, desc, nil)
			require.NoError(b, err)
		}
	})
	b.Run("stargz-snapshotter", func(b *testing.B) {
		peer := esgzconvert.LayerConvertFunc(estargz.WithCompressionLevel(9))
		b.SetBytes(tarBytes)
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			f := convertertest.NewFixture(b)
			desc := f.PutBlob(b, blob, ocispec.MediaTypeImageLayerGzip, nil)
			b.StartTimer()
			_, err := peer(f.Ctx, f.CS, desc)
			require.NoError(b, err)
		}
	})
}

// BenchmarkCachedLayer is a variant-cache hit: a label lookup and an Info.
func BenchmarkCachedLayer(b *testing.B) {
	f := convertertest.NewFixture(b)
	lc, err := stargz.NewEStargz(stargz.DefaultEStargzOptions())
	require.NoError(b, err)
	tarball := imagegen.TarBytes(convertertest.Cases()["regular files and dirs"])
	desc := putLayer(b, f, tarball, "gzip")
	res, err := f.Conv.ConvertLayer(f.Ctx, lc, desc, nil)
	require.NoError(b, err)
	require.NoError(b, f.Conv.Link(f.Ctx, res))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r, err := f.Conv.ConvertLayer(f.Ctx, lc, desc, nil)
		require.NoError(b, err)
		require.Equal(b, converter.StateCached, r.State)
	}
}
