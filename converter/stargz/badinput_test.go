package stargz_test

import (
	"archive/tar"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/converter/stargz"
	"github.com/lazyconv/lazyconv/internal/imagegen"
)

// badLayer is a layer lazyconv must refuse with an errdefs class.
type badLayer struct {
	name      string
	mediaType string
	blob      []byte
	stored    bool // false: the descriptor names a blob the store lacks
	class     func(error) bool
}

func badLayers() []badLayer {
	good := imagegen.TarBytes([]imagegen.Entry{convertertest.File("a", convertertest.RandomBytes(3, 64<<10)), convertertest.File("b", []byte("b"))})
	gz := imagegen.Compress(good, "gzip")
	corrupt := append([]byte(nil), gz...)
	for i := 20; i < len(corrupt)-20; i += 97 {
		corrupt[i] ^= 0x5a
	}
	withTOC := imagegen.TarBytes([]imagegen.Entry{convertertest.File("a", []byte("a")),
		{Header: tar.Header{Name: "stargz.index.json", Typeflag: tar.TypeReg, Mode: 0o644}, Body: []byte(`{"version":1,"entries":[]}`)}})
	return []badLayer{
		{"corrupt gzip", ocispec.MediaTypeImageLayerGzip, corrupt, true, errdefs.IsInvalidArgument},
		{"truncated blob", ocispec.MediaTypeImageLayerGzip, gz[:len(gz)/2], true, errdefs.IsInvalidArgument},
		{"non-tar data", ocispec.MediaTypeImageLayerGzip, imagegen.Compress(convertertest.RandomBytes(4, 100<<10), "gzip"), true, errdefs.IsInvalidArgument},
		{"non-tar uncompressed", ocispec.MediaTypeImageLayer, []byte("this is not a tar archive, not even close to 512 bytes"), true, errdefs.IsInvalidArgument},
		{"gzip media type over plain tar", ocispec.MediaTypeImageLayerGzip, good, true, errdefs.IsInvalidArgument},
		{"unknown media type", "application/vnd.oci.image.layer.v1.tar+bzip2", gz, true, errdefs.IsInvalidArgument},
		{"not a layer", "application/vnd.example.thing", gz, true, errdefs.IsInvalidArgument},
		{"stargz.index.json inside", ocispec.MediaTypeImageLayerGzip, imagegen.Compress(withTOC, "gzip"), true, errdefs.IsInvalidArgument},
		{"missing blob", ocispec.MediaTypeImageLayerGzip, []byte("never stored"), false, errdefs.IsNotFound},
	}
}

func TestBadLayerIsRefusedAndChangesNothing(t *testing.T) {
	conv, err := stargz.NewEStargz(stargz.DefaultEStargzOptions())
	require.NoError(t, err)
	for _, tc := range badLayers() {
		t.Run(tc.name, func(t *testing.T) {
			f := convertertest.NewFixture(t)
			desc := ocispec.Descriptor{MediaType: tc.mediaType, Digest: digest.FromBytes(tc.blob), Size: int64(len(tc.blob))}
			if tc.stored {
				desc = f.PutBlob(t, tc.blob, tc.mediaType, nil)
			}
			before := f.ContentState(t)
			_, err := f.Conv.ConvertLayer(f.Ctx, conv, desc, nil)
			require.Error(t, err)
			t.Log(err)
			assert.True(t, tc.class(err), "wrong class: %v", err)
			assert.Equal(t, before, f.ContentState(t), "the store is as it was")
		})
	}
}

func TestBadLayerInImageChangesNothing(t *testing.T) {
	conv, err := stargz.NewEStargz(stargz.DefaultEStargzOptions())
	require.NoError(t, err)
	for _, tc := range badLayers() {
		if !tc.stored || tc.mediaType == "application/vnd.example.thing" {
			continue // an image cannot be stored without its blobs; non-layers are passed through
		}
		t.Run(tc.name, func(t *testing.T) {
			f := convertertest.NewFixture(t)
			good := imagegen.Compress(imagegen.TarBytes([]imagegen.Entry{convertertest.File("ok", convertertest.RandomBytes(5, 1<<20))}), "gzip")
			_, err := imagegen.Store(f.Ctx, f.CS, f.Store.ImageStore(), imagegen.Image{Name: "bad:v1", Layers: []imagegen.Layer{
				{MediaType: ocispec.MediaTypeImageLayerGzip, Blob: good},
				{MediaType: tc.mediaType, Blob: tc.blob, DiffID: digest.FromBytes(tc.blob)},
			}})
			require.NoError(t, err)
			before := f.ContentState(t)
			_, err = f.Conv.ConvertImage(f.Ctx, f.Store.ImageStore(), "bad:v1", "bad:esgz", converter.ImageOptions{Layers: converter.Every(conv)})
			require.Error(t, err)
			assert.True(t, tc.class(err), "wrong class: %v", err)
			f.GC(t)
			assert.Equal(t, before, f.ContentState(t), "after GC the store is as it was")
			_, err = f.Store.ImageStore().Get(f.Ctx, "bad:esgz")
			assert.True(t, errdefs.IsNotFound(err))
		})
	}
}
