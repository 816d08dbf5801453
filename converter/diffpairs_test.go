package converter_test

import (
	"bytes"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/internal/imagegen"
	"github.com/lazyconv/lazyconv/labels"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDiffPairsComputeOnceThenCache(t *testing.T) {
	f := convertertest.NewFixture(t)
	ctx, cs := f.Ctx, f.CS
	var layers []ocispec.Descriptor
	var want []digest.Digest
	for i, comp := range []string{"gzip", "zstd", ""} {
		tarball := imagegen.TarBytes([]imagegen.Entry{convertertest.File("f", bytes.Repeat([]byte{byte('a' + i)}, 1000))})
		want = append(want, digest.FromBytes(tarball))
		layers = append(layers, f.PutBlob(t, imagegen.Compress(tarball, comp), ocispec.MediaTypeImageLayerGzip, nil))
	}
	dp := converter.NewDiffPairs(cs)
	var wg sync.WaitGroup
	var failures atomic.Int32
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pairs, err := dp.Of(ctx, layers)
			if err != nil || len(pairs) != 3 {
				failures.Add(1)
				return
			}
			for i, p := range pairs {
				if p.DiffID != want[i] || p.Blob != layers[i].Digest {
					failures.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	assert.Zero(t, failures.Load())
	for i, l := range layers {
		info, err := cs.Info(ctx, l.Digest)
		require.NoError(t, err)
		assert.Equal(t, want[i].String(), info.Labels[labels.Uncompressed], "cached as a label")
	}
}
