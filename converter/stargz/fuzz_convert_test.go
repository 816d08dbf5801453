package stargz_test

import (
	"bytes"
	"os"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/klauspost/compress/gzip"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/converter/stargz"
	"github.com/lazyconv/lazyconv/internal/imagegen"
)

// FuzzConvertLayer converts arbitrary bytes, as a tar inside gzip, as a tar,
// and as a gzip blob of its own, to eStargz and zstd:chunked: a conversion
// succeeds or is refused as bad input, and a refused one leaves no ingest and
// no blob.
func FuzzConvertLayer(f *testing.F) {
	for name, entries := range convertertest.Cases() {
		if tarball := imagegen.TarBytes(entries); len(tarball) < 64<<10 {
			f.Add(tarball)
		} else {
			f.Logf("seed %q left out: %d bytes would slow every execution", name, len(tarball))
		}
	}
	f.Add(convertertest.SparseTar(4096))
	f.Add(convertertest.TrailingBomb(imagegen.TarBytes(nil), 2<<20))
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		f.Setenv("TMPDIR", "/dev/shm") // the store's fsyncs cost nothing there
	}
	fx := convertertest.NewFixture(f)
	// Level 1: the fuzzer explores parsing, not compression.
	esgz, _ := stargz.NewEStargz(stargz.EStargzOptions{CompressionLevel: 1})
	zc, _ := stargz.NewZstdChunked(stargz.ZstdChunkedOptions{CompressionLevel: 1})
	ctx := converter.WithLimits(fx.Ctx, converter.Limits{MaxEntries: 10000, MaxExpandedBytes: 64 << 20, MaxTOCBytes: 1 << 20})
	f.Fuzz(func(t *testing.T, data []byte) {
		var gz bytes.Buffer
		w := gzip.NewWriter(&gz)
		_, _ = w.Write(data)
		_ = w.Close()
		for _, blob := range []struct {
			data      []byte
			mediaType string
		}{{gz.Bytes(), ocispec.MediaTypeImageLayerGzip}, {data, ocispec.MediaTypeImageLayer}, {data, ocispec.MediaTypeImageLayerGzip}} {
			desc := fx.PutBlob(t, blob.data, blob.mediaType, nil)
			for _, lc := range []converter.LayerConverter{esgz, zc} {
				before := fx.ContentState(t)
				out, err := lc.Convert(ctx, fx.CS, desc, converter.Counters{})
				if err == nil {
					if out.Desc.Digest != desc.Digest {
						_ = fx.CS.Delete(fx.Ctx, out.Desc.Digest)
					}
					continue
				}
				if !errdefs.IsInvalidArgument(err) {
					t.Fatalf("%s of %s: error without the InvalidArgument class: %v", lc.Variant(), blob.mediaType, err)
				}
				if after := fx.ContentState(t); len(after) != len(before) {
					t.Fatalf("%s of %s: a refused conversion left %d blobs or ingests behind", lc.Variant(), blob.mediaType, len(after)-len(before))
				}
			}
			_ = fx.CS.Delete(fx.Ctx, desc.Digest)
		}
	})
}
