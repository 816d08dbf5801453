//go:build cgo

package soci_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"sync/atomic"
	"testing"

	sociapi "github.com/awslabs/soci-snapshotter/soci"
	"github.com/awslabs/soci-snapshotter/ztoc"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/converter/soci"
	"github.com/lazyconv/lazyconv/labels"
)

// publication serves the blobs of another node's store as a published
// conversion of one manifest (what remote.SharedConversions gives).
type publication struct {
	from      content.Store
	published ocispec.Descriptor
	trusted   bool
	fetched   atomic.Int64
}

func (p *publication) Lookup(ctx context.Context, _ ocispec.Descriptor, _ string) ([]converter.SharedConversion, error) {
	return []converter.SharedConversion{{
		Manifest: p.published, Where: "registry.example/app", Trusted: p.trusted,
		Read: func(ctx context.Context, d ocispec.Descriptor) ([]byte, error) {
			return content.ReadBlob(ctx, p.from, d)
		},
		Resolve: func(ctx context.Context, d digest.Digest) (ocispec.Descriptor, error) {
			info, err := p.from.Info(ctx, d)
			return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: d, Size: info.Size}, err
		},
		Adopt: func(context.Context) error { return nil },
		Fetch: func(ctx context.Context, d ocispec.Descriptor, _ *atomic.Int64) error {
			p.fetched.Add(1)
			b, err := content.ReadBlob(ctx, p.from, d)
			if err != nil {
				return err
			}
			return content.WriteBlob(ctx, cs(ctx), "fetch-"+d.Digest.Encoded(), bytes.NewReader(b), d)
		},
	}}, nil
}

type csKey struct{}

func cs(ctx context.Context) content.Store { return ctx.Value(csKey{}).(content.Store) }

// A published SOCI conversion is adopted once its SOCI index is the
// canonical one for the layers and each zTOC checks out against its layer;
// one whose zTOC lies (a file renamed: what soci-snapshotter would serve
// under another name) or whose index is not canonical is not used, with a
// warning, and the image is converted here to the honest digest.
func TestPublishedSOCIConversions(t *testing.T) {
	opts := soci.Options{SpanSize: 512 << 10, MinLayerSize: 1 << 10}
	a, img, honest, idx := publisher(t, opts)
	published := idx.Manifests[0]
	var pm ocispec.Manifest
	readJSON(t, a, published, &pm)

	// A hostile publication: the same manifest, its zTOC's file table
	// renaming a file, in the canonical index of that zTOC.
	sociIndex := idx.Manifests[1]
	var si ocispec.Manifest
	readJSON(t, a, sociIndex, &si)
	zb, err := content.ReadBlob(a.Ctx, a.CS, si.Layers[0])
	require.NoError(t, err)
	zt, err := ztoc.Unmarshal(bytes.NewReader(zb))
	require.NoError(t, err)
	zt.FileMetadata[0].Name = "usr/bin/sudo"
	r, zd, err := ztoc.Marshal(zt)
	require.NoError(t, err)
	raw, err := io.ReadAll(r)
	require.NoError(t, err)
	require.NoError(t, content.WriteBlob(a.Ctx, a.CS, "hostile-ztoc", bytes.NewReader(raw), zd))
	bad := si.Layers[0]
	bad.Digest, bad.Size = zd.Digest, zd.Size
	hostileIndex, err := soci.Index(a.Ctx, a.CS, []ocispec.Descriptor{bad})
	require.NoError(t, err)
	hostile := writeManifest(t, a, pm, map[string]string{sociapi.ImageAnnotationSociIndexDigest: hostileIndex.Digest.String()})
	// And one naming an index that is not canonical (another build tool).
	odd := si
	odd.Annotations = map[string]string{sociapi.IndexAnnotationBuildToolIdentifier: "evil"}
	oddIndex := writeManifest(t, a, odd, nil)
	notCanonical := writeManifest(t, a, pm, map[string]string{sociapi.ImageAnnotationSociIndexDigest: oddIndex.Digest.String()})

	for _, tc := range []struct {
		name      string
		published ocispec.Descriptor
		trusted   bool
		adopted   bool
		warning   string
	}{
		{name: "honest", published: published, adopted: true},
		{name: "honest, trusted", published: published, trusted: true, adopted: true},
		{name: "a zTOC renaming a file", published: hostile, warning: "the layer's zTOC built here is"},
		{name: "an index that is not canonical", published: notCanonical, warning: "not the index of its zTOCs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := convertertest.NewFixture(t)
			image(t, b)
			pub := &publication{from: a.CS, published: tc.published, trusted: tc.trusted}
			o := sociImage(opts)
			o.Shared = pub
			ctx := context.WithValue(b.Ctx, csKey{}, b.CS)
			res, err := b.Conv.ConvertImage(ctx, b.Store.ImageStore(), img.Name, img.Name+"-soci", o)
			require.NoError(t, err)
			assert.Equal(t, honest.Image.Target.Digest, res.Image.Target.Digest, "the honest SOCI-enabled image either way")
			if tc.adopted {
				assert.Len(t, res.Shared, 1, "adopted")
				assert.Empty(t, res.Warnings)
				assert.Positive(t, pub.fetched.Load(), "the zTOC was fetched")
			} else {
				assert.Empty(t, res.Shared, "not adopted")
				require.Len(t, res.Warnings, 1)
				assert.Contains(t, res.Warnings[0], tc.warning)
			}
			var bi ocispec.Index
			readJSON(t, b, res.Image.Target, &bi)
			mi, err := b.CS.Info(b.Ctx, bi.Manifests[0].Digest)
			require.NoError(t, err)
			assert.Equal(t, img.Target.Digest.String(), mi.Labels[labels.ConvertedFrom], "labelled as a conversion of the source, for publishing")
			assert.Equal(t, tc.trusted, mi.Labels[labels.AdoptedUnverified] != "", "only a trusted adoption is unverified")
		})
	}
}

// publisher is another node's store holding the image and its SOCI
// conversion (and that conversion's image index).
func publisher(t *testing.T, opts soci.Options) (*convertertest.Fixture, images.Image, *converter.ImageResult, ocispec.Index) {
	t.Helper()
	a := convertertest.NewFixture(t)
	img := image(t, a)
	honest, err := a.Conv.ConvertImage(a.Ctx, a.Store.ImageStore(), img.Name, img.Name+"-soci", sociImage(opts))
	require.NoError(t, err)
	var idx ocispec.Index
	readJSON(t, a, honest.Image.Target, &idx)
	return a, img, honest, idx
}

func readJSON(t *testing.T, f *convertertest.Fixture, d ocispec.Descriptor, v any) {
	t.Helper()
	b, err := content.ReadBlob(f.Ctx, f.CS, d)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, v))
}

// writeManifest stores m with these annotations in place of its own (nil:
// as it is).
func writeManifest(t *testing.T, f *convertertest.Fixture, m ocispec.Manifest, ann map[string]string) ocispec.Descriptor {
	t.Helper()
	if ann != nil {
		m.Annotations = ann
	}
	b, err := json.Marshal(m)
	require.NoError(t, err)
	d := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(b), Size: int64(len(b))}
	require.NoError(t, content.WriteBlob(f.Ctx, f.CS, "m-"+d.Digest.Encoded(), bytes.NewReader(b), d))
	return d
}

// A layer that gets no zTOC is never fetched for one: converting an image
// whose small layer is not here (a lazy pull) asks for none of its layers.
func TestLayersBelowTheMinimumAreNotFetched(t *testing.T) {
	f := convertertest.NewFixture(t)
	img := image(t, f)
	var m ocispec.Manifest
	readJSON(t, f, img.Target, &m)
	small := m.Layers[1]
	require.NoError(t, f.CS.Delete(f.Ctx, small.Digest))
	var asked []digest.Digest
	o := sociImage(soci.Options{SpanSize: 512 << 10, MinLayerSize: 1 << 10})
	o.EnsureLayer = func(_ context.Context, l, _ ocispec.Descriptor, _ int, _ converter.LayerReport) (converter.Ensured, error) {
		asked = append(asked, l.Digest)
		return converter.Ensured{Desc: l}, nil
	}
	_, err := f.Conv.ConvertImage(f.Ctx, f.Store.ImageStore(), img.Name, img.Name+"-soci", o)
	require.NoError(t, err)
	assert.Empty(t, asked, "the small layer (below the minimum) is not fetched")
}
