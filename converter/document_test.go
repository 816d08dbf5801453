package converter_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

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

// document is a JSON object of exactly size bytes.
func document(size int) []byte {
	b, _ := json.Marshal(map[string]string{"pad": strings.Repeat("x", size-len(`{"pad":""}`))})
	return b
}

func TestReadDocumentWithinTheLimit(t *testing.T) {
	f := convertertest.NewFixture(t)
	put := func(b []byte) ocispec.Descriptor {
		return f.PutBlob(t, b, ocispec.MediaTypeImageConfig, map[string]string{"example": "label"})
	}
	small, big := put(document(1000)), put(document(converter.DefaultMaxDocumentBytes+1))
	lying := small
	lying.Digest = big.Digest // a descriptor claiming 1000 bytes of a larger blob
	for _, tc := range []struct {
		name  string
		limit int64 // MaxDocumentBytes; 0: the default
		desc  ocispec.Descriptor
		class func(error) bool // nil: read
	}{
		{"under the default", 0, small, nil},
		{"beyond the default", 0, big, errdefs.IsInvalidArgument},
		{"with no limit", -1, big, nil},
		{"at the limit", 1000, small, nil},
		{"one byte beyond the limit", 999, small, errdefs.IsInvalidArgument},
		{"the stored size counts, not the descriptor's", 0, lying, errdefs.IsInvalidArgument},
		{"not JSON", 0, put([]byte("{not json")), errdefs.IsInvalidArgument},
		{"missing", 0, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromString("missing"), Size: 7}, errdefs.IsNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := converter.WithLimits(f.Ctx, converter.Limits{MaxDocumentBytes: tc.limit})
			var v map[string]string
			lbls, err := converter.ReadDocument(ctx, f.CS, &v, tc.desc)
			if tc.class == nil {
				require.NoError(t, err)
				assert.Equal(t, "label", lbls["example"])
				assert.NotEmpty(t, v["pad"])
				return
			}
			require.Error(t, err)
			assert.True(t, tc.class(err), "class: %v", err)
			if errdefs.IsInvalidArgument(err) && !strings.Contains(tc.name, "JSON") {
				assert.Contains(t, err.Error(), "max_document_bytes")
				assert.Contains(t, err.Error(), "--max-document-bytes")
			}
		})
	}
}

// nested is an image whose manifest is wrapped in depth indexes, each
// listing what it wraps fanOut times.
func nested(name string, depth, fanOut int) imagegen.Image {
	tarball := imagegen.TarBytes([]imagegen.Entry{convertertest.File("f", []byte(name))})
	return imagegen.Image{Name: name, Indexes: depth,
		Layers: []imagegen.Layer{{MediaType: ocispec.MediaTypeImageLayerGzip, Blob: imagegen.Compress(tarball, "gzip")}},
		EditIndex: func(_ int, index *ocispec.Index) {
			for len(index.Manifests) < fanOut {
				index.Manifests = append(index.Manifests, index.Manifests[0])
			}
		}}
}

func TestIndexDepthLimit(t *testing.T) {
	esgz, err := stargz.NewEStargz(stargz.DefaultEStargzOptions())
	require.NoError(t, err)
	for _, tc := range []struct {
		name    string
		indexes int
		limit   int64 // MaxIndexDepth; 0: the default
		ok      bool
	}{
		{"a manifest", 0, 1, true},
		{"an index at a limit of 1", 1, 1, true},
		{"an index in an index beyond a limit of 1", 2, 1, false},
		{"at the default", converter.DefaultMaxIndexDepth, 0, true},
		{"beyond the default", converter.DefaultMaxIndexDepth + 1, 0, false},
		{"with no limit", 12, -1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := convertertest.NewFixture(t)
			img := nested("nested:v1", tc.indexes, 1)
			_, err := imagegen.Store(f.Ctx, f.CS, f.Store.ImageStore(), img)
			require.NoError(t, err)
			f.GC(t)
			before := storeState(t, f)
			res, err := f.Conv.ConvertImage(f.Ctx, f.Store.ImageStore(), img.Name, "nested:esgz",
				converter.ImageOptions{Layers: converter.Every(esgz), Limits: converter.Limits{MaxIndexDepth: tc.limit}})
			if !tc.ok {
				require.Error(t, err)
				assert.True(t, errdefs.IsInvalidArgument(err), "class: %v", err)
				assert.Contains(t, err.Error(), "max_index_depth")
				assert.Contains(t, err.Error(), "--max-index-depth")
				f.GC(t)
				assert.Equal(t, before, storeState(t, f), "after GC the store is as it was")
				return
			}
			require.NoError(t, err)
			desc := res.Image.Target
			for range tc.indexes {
				require.Equal(t, ocispec.MediaTypeImageIndex, desc.MediaType)
				desc = convertertest.ReadJSON[ocispec.Index](t, f, desc).Manifests[0]
			}
			m := convertertest.ReadJSON[ocispec.Manifest](t, f, desc)
			assert.NotEmpty(t, m.Layers[0].Annotations[labels.TOCDigestAnnotation], "the layer is converted")
		})
	}
}

// An index listing another many times, level after level, is converted once
// per level: 100 entries at 4 levels are not 100^3 conversions.
func TestRepeatedIndexesAreConvertedOncePerLevel(t *testing.T) {
	f := convertertest.NewFixture(t)
	img := nested("fanout:v1", converter.DefaultMaxIndexDepth, 100)
	_, err := imagegen.Store(f.Ctx, f.CS, f.Store.ImageStore(), img)
	require.NoError(t, err)
	esgz, err := stargz.NewEStargz(stargz.DefaultEStargzOptions())
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(f.Ctx, time.Minute)
	defer cancel()
	res, err := f.Conv.ConvertImage(ctx, f.Store.ImageStore(), img.Name, "fanout:esgz", converter.ImageOptions{Layers: converter.Every(esgz)})
	require.NoError(t, err)
	out := convertertest.ReadJSON[ocispec.Index](t, f, res.Image.Target)
	require.Len(t, out.Manifests, 100)
	for _, m := range out.Manifests {
		assert.Equal(t, out.Manifests[0], m, "every entry is the same converted index")
	}
	assert.Len(t, res.Layers, 1, "the one layer, converted once")
}
