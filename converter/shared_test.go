package converter_test

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/converter/recompress"
	"github.com/lazyconv/lazyconv/converter/stargz"
	"github.com/lazyconv/lazyconv/internal/imagegen"
	"github.com/lazyconv/lazyconv/labels"
)

// publishedIn serves conversions from another node's store, as a registry
// holding what that node pushed would.
type publishedIn struct {
	node      *convertertest.Fixture
	manifests []ocispec.Descriptor
	err       error
	adopted   int
	into      content.Store // the adopting node's store, for Fetch
	trusted   bool
	fetched   atomic.Int64 // layers fetched (verification fetches them concurrently)
}

func (p *publishedIn) Lookup(_ context.Context, _ ocispec.Descriptor, _ string) ([]converter.SharedConversion, error) {
	var out []converter.SharedConversion
	for _, m := range p.manifests {
		out = append(out, converter.SharedConversion{
			Manifest: m, Where: "node-a/app",
			Read: func(_ context.Context, d ocispec.Descriptor) ([]byte, error) {
				return content.ReadBlob(p.node.Ctx, p.node.CS, d)
			},
			Adopt:   func(context.Context) error { p.adopted++; return nil },
			Trusted: p.trusted,
			Fetch: func(ctx context.Context, d ocispec.Descriptor, _ *atomic.Int64) error {
				p.fetched.Add(1)
				ra, err := p.node.CS.ReaderAt(p.node.Ctx, d)
				if err != nil {
					return err
				}
				defer ra.Close()
				return content.WriteBlob(ctx, p.into, "fetch-"+d.Digest.String(), content.NewReader(ra), d)
			},
		})
	}
	return out, p.err
}

// publish writes a doctored manifest, and its config if doctored too (nil:
// the published config as it is), to node a's store.
func publish(t *testing.T, a *convertertest.Fixture, m ocispec.Manifest, cfg *ocispec.Image) ocispec.Descriptor {
	t.Helper()
	if cfg != nil {
		b, err := json.Marshal(cfg)
		require.NoError(t, err)
		m.Config = a.PutBlob(t, b, ocispec.MediaTypeImageConfig, nil)
	}
	b, err := json.Marshal(m)
	require.NoError(t, err)
	return a.PutBlob(t, b, ocispec.MediaTypeImageManifest, nil)
}

// convertedOn converts the test image on a fresh node and returns it, the
// node and its manifest and config.
func convertedOn(t *testing.T, lc converter.LayerConverter) (*convertertest.Fixture, ocispec.Descriptor, ocispec.Manifest, ocispec.Image) {
	t.Helper()
	a := convertertest.NewFixture(t)
	a.TestImage(t, "example.com/app:v1", false)
	res, err := a.Conv.ConvertImage(a.Ctx, a.Store.ImageStore(), "example.com/app:v1", "example.com/app:conv", converter.ImageOptions{Layers: converter.Every(lc)})
	require.NoError(t, err)
	m := convertertest.ReadJSON[ocispec.Manifest](t, a, res.Image.Target)
	return a, res.Image.Target, m, convertertest.ReadJSON[ocispec.Image](t, a, m.Config)
}

// From a trusted publisher, a conversion is adopted unread.
func TestSharedConversionIsAdoptedUnreadFromATrustedPublisher(t *testing.T) {
	lc, err := stargz.NewEStargz(stargz.DefaultEStargzOptions())
	require.NoError(t, err)
	a, published, _, _ := convertedOn(t, lc)

	b := convertertest.NewFixture(t)
	src := b.TestImage(t, "example.com/app:v1", false)
	shared := &publishedIn{node: a, manifests: []ocispec.Descriptor{published}, trusted: true, into: b.CS}
	progress := converter.NewProgress()
	res, err := b.Conv.ConvertImage(b.Ctx, b.Store.ImageStore(), "example.com/app:v1", "example.com/app:conv",
		converter.ImageOptions{Layers: converter.Every(lc), Shared: shared, Progress: progress})
	require.NoError(t, err)
	assert.Equal(t, published.Digest, res.Image.Target.Digest, "node B's image is node A's")
	assert.Zero(t, b.Conv.Conversions(), "no layer converted")
	assert.Empty(t, res.Warnings)
	assert.Equal(t, "node-a/app@"+published.Digest.String(), res.Shared[src.Digest])
	assert.Equal(t, 1, shared.adopted)
	assert.Zero(t, shared.fetched.Load(), "no layer read")
	for _, s := range progress.Snapshot() {
		assert.Equal(t, converter.StateShared, s.State)
		assert.Equal(t, converter.OriginRegistry, s.Origin)
		assert.NotEmpty(t, s.Output)
		assert.False(t, s.Verified)
	}
	info, err := b.CS.Info(b.Ctx, res.Image.Target.Digest)
	require.NoError(t, err)
	assert.Equal(t, src.Digest.String(), info.Labels[labels.ConvertedFrom], "the manifest says what it converts")
	assert.Equal(t, lc.Variant(), info.Labels[labels.ConvertedVariant])
	assert.Equal(t, "node-a/app", info.Labels[labels.AdoptedUnverified], "adopted unread: never published again from here")

	// The layers of B's source are local, but not the converted ones: the
	// variant cache is not told of a blob it cannot serve.
	m := convertertest.ReadJSON[ocispec.Manifest](t, b, res.Image.Target)
	for _, l := range m.Layers {
		_, err := b.CS.Info(b.Ctx, l.Digest)
		assert.True(t, errdefs.IsNotFound(err), "converted layer %s stays remote", l.Digest)
	}
}

// Without a trusted publisher, a conversion is adopted once every layer is
// fetched and checked against its source; the pairs enter the variant cache.
func TestSharedConversionIsVerifiedBeforeItIsAdopted(t *testing.T) {
	esgz, err := stargz.NewEStargz(stargz.DefaultEStargzOptions())
	require.NoError(t, err)
	zc, err := stargz.NewZstdChunked(stargz.DefaultZstdChunkedOptions())
	require.NoError(t, err)
	gz, err := recompress.New(converter.Gzip, recompress.Options{})
	require.NoError(t, err)
	for _, lc := range []converter.LayerConverter{esgz, zc, gz} {
		t.Run(lc.Variant(), func(t *testing.T) {
			a, published, _, _ := convertedOn(t, lc)
			b := convertertest.NewFixture(t)
			src := b.TestImage(t, "example.com/app:v1", false)
			shared := &publishedIn{node: a, manifests: []ocispec.Descriptor{published}, into: b.CS}
			progress := converter.NewProgress()
			res, err := b.Conv.ConvertImage(b.Ctx, b.Store.ImageStore(), "example.com/app:v1", "example.com/app:conv",
				converter.ImageOptions{Layers: converter.Every(lc), Shared: shared, Progress: progress})
			require.NoError(t, err)
			assert.Empty(t, res.Warnings)
			assert.Equal(t, published.Digest, res.Image.Target.Digest)
			assert.Zero(t, b.Conv.Conversions(), "nothing converted")
			sharedLayers := 0
			for _, s := range progress.Snapshot() {
				if s.State == converter.StateKept { // gzip: the gzip source layer is its own variant
					continue
				}
				sharedLayers++
				assert.Equal(t, converter.StateShared, s.State)
				assert.True(t, s.Verified)
			}
			assert.Positive(t, sharedLayers)
			assert.Equal(t, int64(sharedLayers), shared.fetched.Load(), "each published layer fetched")
			assert.Contains(t, res.Shared, src.Digest)
			info, err := b.CS.Info(b.Ctx, res.Image.Target.Digest)
			require.NoError(t, err)
			assert.Empty(t, info.Labels[labels.AdoptedUnverified], "verified here: publishable")
			// The verified pairs are in the local variant cache: with no
			// publication found, a second conversion converts nothing.
			shared.manifests = nil
			again, err := b.Conv.ConvertImage(b.Ctx, b.Store.ImageStore(), "example.com/app:v1", "example.com/app:conv2",
				converter.ImageOptions{Layers: converter.Every(lc), Shared: shared})
			require.NoError(t, err)
			assert.Equal(t, published.Digest, again.Image.Target.Digest)
			assert.Zero(t, b.Conv.Conversions(), "every layer from the variant cache")
		})
	}
}

// A published conversion is adopted only if it rebuilds from the source
// and each of its layers checks out against its source layer: anything
// else is converted here, with a warning saying why.
func TestSharedConversionThatDoesNotCheckOutIsConvertedHere(t *testing.T) {
	esgz, err := stargz.NewEStargz(stargz.DefaultEStargzOptions())
	require.NoError(t, err)
	zstd, err := stargz.NewZstdChunked(stargz.DefaultZstdChunkedOptions())
	require.NoError(t, err)
	gz, err := recompress.New(converter.Gzip, recompress.Options{})
	require.NoError(t, err)
	for _, tc := range []struct {
		name   string
		lc     converter.LayerConverter
		doctor func(m *ocispec.Manifest, cfg *ocispec.Image) bool // true: the config changed
		// impostor publishes the layers of another image's conversion with
		// the honest config, but for its diff_ids, byte for byte as a
		// converter writes it (so the manifest rebuilds).
		impostor bool
		lookup   error
		want     string
	}{
		{name: "eStargz layers of another image", lc: esgz, impostor: true, want: "not the source's"},
		{name: "not lossless gzip", lc: gz, want: "is not lossless",
			doctor: func(m *ocispec.Manifest, _ *ocispec.Image) bool {
				m.Layers[1].Annotations = map[string]string{labels.NotLosslessAnnotation: "sparse files written as regular files: x"}
				return false
			}},
		{name: "urls", lc: esgz, want: "lists URLs",
			doctor: func(m *ocispec.Manifest, _ *ocispec.Image) bool {
				m.Layers[0].URLs = []string{"http://127.0.0.1:9/blob"}
				return false
			}},
		{name: "urls on a layer kept as it is", lc: gz, want: "lists URLs",
			doctor: func(m *ocispec.Manifest, _ *ocispec.Image) bool {
				m.Layers[0].URLs = []string{"http://127.0.0.1:9/blob"} // the gzip source layer, kept by gzip
				return false
			}},
		{name: "a kept layer with other annotations", lc: gz, want: "other annotations",
			doctor: func(m *ocispec.Manifest, _ *ocispec.Image) bool {
				m.Layers[0].Annotations = map[string]string{labels.UncompressedSizeAnnotation: "1"}
				return false
			}},
		{name: "an annotation the layer does not hold", lc: esgz, want: "annotations",
			doctor: func(m *ocispec.Manifest, _ *ocispec.Image) bool {
				m.Layers[2].Annotations["org.example.injected"] = "1"
				return false
			}},
		{name: "layer dropped", lc: esgz, want: "lists 2 layers, the source 3",
			doctor: func(m *ocispec.Manifest, cfg *ocispec.Image) bool {
				m.Layers = m.Layers[:2]
				cfg.RootFS.DiffIDs = cfg.RootFS.DiffIDs[:2]
				return true
			}},
		{name: "config changed", lc: esgz, want: "not the published manifest",
			doctor: func(_ *ocispec.Manifest, cfg *ocispec.Image) bool {
				cfg.Config.Env = append(cfg.Config.Env, "INJECTED=1")
				return true
			}},
		{name: "media type of another format", lc: esgz, want: "has media type",
			doctor: func(m *ocispec.Manifest, _ *ocispec.Image) bool {
				m.Layers[0].MediaType = ocispec.MediaTypeImageLayerZstd
				return false
			}},
		{name: "zstd:chunked with another tar", lc: zstd, want: "keeps the source's tar",
			doctor: func(_ *ocispec.Manifest, cfg *ocispec.Image) bool {
				cfg.RootFS.DiffIDs[1] = digest.FromString("other")
				return true
			}},
		{name: "registry error", lc: esgz, lookup: errors.New("registry says 500"), want: "registry says 500; converting here"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, honest, m, cfg := convertedOn(t, tc.lc)
			shared := &publishedIn{node: a, err: tc.lookup}
			if tc.impostor {
				impostor := impostorConversion(t, a, tc.lc)
				m.Layers = impostor.m.Layers
				m.Config = rewriteDiffIDs(t, a, m.Config, impostor.cfg.RootFS.DiffIDs)
				shared.manifests = []ocispec.Descriptor{publish(t, a, m, nil)}
			}
			if tc.doctor != nil {
				var doctored *ocispec.Image
				if tc.doctor(&m, &cfg) {
					doctored = &cfg
				}
				shared.manifests = []ocispec.Descriptor{publish(t, a, m, doctored)}
			}
			b := convertertest.NewFixture(t)
			shared.into = b.CS
			b.TestImage(t, "example.com/app:v1", false)
			res, err := b.Conv.ConvertImage(b.Ctx, b.Store.ImageStore(), "example.com/app:v1", "example.com/app:conv",
				converter.ImageOptions{Layers: converter.Every(tc.lc), Shared: shared})
			require.NoError(t, err)
			assert.Equal(t, honest.Digest, res.Image.Target.Digest, "converted here, to the honest digest")
			assert.Positive(t, b.Conv.Conversions())
			assert.Empty(t, res.Shared)
			assert.Zero(t, shared.adopted)
			require.Len(t, res.Warnings, 1)
			assert.Contains(t, res.Warnings[0], tc.want)
		})
	}
}

// rewriteDiffIDs stores the config desc of node a with other diff_ids, its
// other fields byte for byte.
func rewriteDiffIDs(t *testing.T, a *convertertest.Fixture, desc ocispec.Descriptor, diffIDs []digest.Digest) ocispec.Descriptor {
	t.Helper()
	raw, err := content.ReadBlob(a.Ctx, a.CS, desc)
	require.NoError(t, err)
	var cfg map[string]*json.RawMessage
	require.NoError(t, json.Unmarshal(raw, &cfg))
	rootfs, err := json.Marshal(ocispec.RootFS{Type: "layers", DiffIDs: diffIDs})
	require.NoError(t, err)
	cfg["rootfs"] = (*json.RawMessage)(&rootfs)
	b, err := json.Marshal(cfg)
	require.NoError(t, err)
	return a.PutBlob(t, b, desc.MediaType, nil)
}

type conversion struct {
	m   ocispec.Manifest
	cfg ocispec.Image
}

// impostorConversion converts, on node f, an image with other
// files (a setuid binary among them) and returns its manifest and config.
func impostorConversion(t *testing.T, f *convertertest.Fixture, lc converter.LayerConverter) conversion {
	t.Helper()
	var layers []imagegen.Layer
	for i := range 3 {
		entries := []imagegen.Entry{{Header: tar.Header{Name: "usr/bin/su", Typeflag: tar.TypeReg, Mode: 0o4755, Size: 2, ModTime: convertertest.Epoch}, Body: []byte{'x', byte(i)}}}
		layers = append(layers, imagegen.Layer{MediaType: ocispec.MediaTypeImageLayerGzip, Blob: imagegen.Compress(imagegen.TarBytes(entries), "gzip")})
	}
	_, err := imagegen.Store(f.Ctx, f.CS, f.Store.ImageStore(), imagegen.Image{Name: "example.com/impostor:v1", Layers: layers})
	require.NoError(t, err)
	res, err := f.Conv.ConvertImage(f.Ctx, f.Store.ImageStore(), "example.com/impostor:v1", "example.com/impostor:conv", converter.ImageOptions{Layers: converter.Every(lc)})
	require.NoError(t, err)
	m := convertertest.ReadJSON[ocispec.Manifest](t, f, res.Image.Target)
	return conversion{m: m, cfg: convertertest.ReadJSON[ocispec.Image](t, f, m.Config)}
}

// A conversion published with other media types (the source's Docker types
// made OCI) is not this request's: converted here, without a warning.
func TestSharedConversionWithOtherMediaTypesIsNotTried(t *testing.T) {
	lc, err := stargz.NewZstdChunked(stargz.DefaultZstdChunkedOptions())
	require.NoError(t, err)
	a := convertertest.NewFixture(t)
	a.TestImage(t, "example.com/app:v1", true)
	published, err := a.Conv.ConvertImage(a.Ctx, a.Store.ImageStore(), "example.com/app:v1", "example.com/app:oci",
		converter.ImageOptions{Layers: converter.Every(lc), DockerToOCI: true})
	require.NoError(t, err)

	b := convertertest.NewFixture(t)
	b.TestImage(t, "example.com/app:v1", true)
	shared := &publishedIn{node: a, manifests: []ocispec.Descriptor{published.Image.Target}, into: b.CS}
	res, err := b.Conv.ConvertImage(b.Ctx, b.Store.ImageStore(), "example.com/app:v1", "example.com/app:docker",
		converter.ImageOptions{Layers: converter.Every(lc), Shared: shared})
	require.NoError(t, err)
	assert.NotEqual(t, published.Image.Target.Digest, res.Image.Target.Digest)
	assert.Empty(t, res.Warnings)
	assert.Empty(t, res.Shared)
	assert.Positive(t, b.Conv.Conversions())

	// With --oci it is this request's, but B has every layer's variant
	// now: the registry is not asked.
	shared.err = errors.New("not to be asked")
	res, err = b.Conv.ConvertImage(b.Ctx, b.Store.ImageStore(), "example.com/app:v1", "example.com/app:oci",
		converter.ImageOptions{Layers: converter.Every(lc), Shared: shared, DockerToOCI: true})
	require.NoError(t, err)
	assert.Equal(t, published.Image.Target.Digest, res.Image.Target.Digest, "the same digest from the local cache")
	assert.Empty(t, res.Shared)
	assert.Empty(t, res.Warnings, "the registry was not asked")

	c := convertertest.NewFixture(t)
	c.TestImage(t, "example.com/app:v1", true)
	res, err = c.Conv.ConvertImage(c.Ctx, c.Store.ImageStore(), "example.com/app:v1", "example.com/app:oci",
		converter.ImageOptions{Layers: converter.Every(lc), Shared: &publishedIn{node: a, manifests: []ocispec.Descriptor{published.Image.Target}, into: c.CS}, DockerToOCI: true})
	require.NoError(t, err)
	assert.Equal(t, published.Image.Target.Digest, res.Image.Target.Digest)
	assert.Len(t, res.Shared, 1, "a node without the variants adopts it")
}
