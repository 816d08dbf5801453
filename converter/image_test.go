package converter_test

import (
	"bytes"
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/platforms"
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

func TestConvertImageEStargz(t *testing.T) {
	for _, docker := range []bool{false, true} {
		t.Run(map[bool]string{false: "oci", true: "docker-to-oci"}[docker], func(t *testing.T) {
			f := convertertest.NewFixture(t)
			src := f.TestImage(t, "example.com/app:v1", docker)
			conv, err := stargz.NewEStargz(stargz.DefaultEStargzOptions())
			require.NoError(t, err)
			progress := converter.NewProgress()
			res, err := f.Conv.ConvertImage(f.Ctx, f.Store.ImageStore(), "example.com/app:v1", "example.com/app:esgz",
				converter.ImageOptions{Layers: converter.Every(conv), DockerToOCI: true, Progress: progress})
			require.NoError(t, err)
			require.NotEqual(t, src.Digest, res.Image.Target.Digest)
			assert.Equal(t, ocispec.MediaTypeImageManifest, res.Image.Target.MediaType)

			m := convertertest.ReadJSON[ocispec.Manifest](t, f, res.Image.Target)
			cfg := convertertest.ReadJSON[ocispec.Image](t, f, m.Config)
			require.Len(t, m.Layers, 3)
			assert.Equal(t, ocispec.MediaTypeImageConfig, m.Config.MediaType)
			minfo, err := f.CS.Info(f.Ctx, res.Image.Target.Digest)
			require.NoError(t, err)
			assert.Equal(t, m.Config.Digest.String(), minfo.Labels["containerd.io/gc.ref.content.config"])
			for i, l := range m.Layers {
				assert.Equal(t, ocispec.MediaTypeImageLayerGzip, l.MediaType)
				assert.NotEmpty(t, l.Annotations[labels.TOCDigestAnnotation])
				diffID, err := images.GetDiffID(f.Ctx, f.CS, l)
				require.NoError(t, err)
				assert.Equal(t, diffID, cfg.RootFS.DiffIDs[i], "config diff_ids follow the converted layers")
				assert.Equal(t, l.Digest.String(), minfo.Labels["containerd.io/gc.ref.content.l."+string(rune('0'+i))])
			}
			for _, s := range progress.Snapshot() {
				assert.Equal(t, converter.StateCommitted, s.State, s.Digest)
				assert.Greater(t, s.BytesIn, int64(0))
				assert.Greater(t, s.BytesOut, int64(0))
			}

			// A second conversion, into another name, is served from the variant cache.
			before := f.Conv.Conversions()
			again, err := f.Conv.ConvertImage(f.Ctx, f.Store.ImageStore(), "example.com/app:v1", "example.com/app:esgz2",
				converter.ImageOptions{Layers: converter.Every(conv), DockerToOCI: true})
			require.NoError(t, err)
			assert.Equal(t, before, f.Conv.Conversions())
			assert.Equal(t, res.Image.Target.Digest, again.Image.Target.Digest, "same layers, same manifest")
			for _, l := range again.Layers {
				assert.Equal(t, converter.StateCached, l.State)
			}
		})
	}
}

func TestConvertImageConcurrentRequestsConvertEachLayerOnce(t *testing.T) {
	f := convertertest.NewFixture(t)
	f.TestImage(t, "example.com/app:v1", false)
	conv, err := stargz.NewEStargz(stargz.DefaultEStargzOptions())
	require.NoError(t, err)
	const n = 50
	var (
		wg      sync.WaitGroup
		targets = make([]digest.Digest, n)
		errs    = make([]error, n)
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := f.Conv.ConvertImage(f.Ctx, f.Store.ImageStore(), "example.com/app:v1", "example.com/app:esgz",
				converter.ImageOptions{Layers: converter.Every(conv)})
			errs[i] = err
			if err == nil {
				targets[i] = res.Image.Target.Digest
			}
		}()
	}
	wg.Wait()
	for i := range n {
		require.NoError(t, errs[i])
		assert.Equal(t, targets[0], targets[i])
	}
	assert.Equal(t, int64(3), f.Conv.Conversions(), "each of the 3 layers converted exactly once")
}

func TestVariantsLiveWithTheirSource(t *testing.T) {
	f := convertertest.NewFixture(t)
	src := f.TestImage(t, "example.com/app:v1", false)
	conv, err := stargz.NewEStargz(stargz.DefaultEStargzOptions())
	require.NoError(t, err)
	res, err := f.Conv.ConvertImage(f.Ctx, f.Store.ImageStore(), "example.com/app:v1", "example.com/app:esgz", converter.ImageOptions{Layers: converter.Every(conv)})
	require.NoError(t, err)
	srcLayers := convertertest.ReadJSON[ocispec.Manifest](t, f, src).Layers
	variants := convertertest.ReadJSON[ocispec.Manifest](t, f, res.Image.Target).Layers

	for i, l := range srcLayers {
		info, err := f.CS.Info(f.Ctx, l.Digest)
		require.NoError(t, err)
		assert.Equal(t, variants[i].Digest.String(), info.Labels[labels.VariantKey(conv.Variant())])
		assert.NotEmpty(t, info.Labels[labels.Uncompressed], "the source's diffID is cached on the way")
		vinfo, err := f.CS.Info(f.Ctx, variants[i].Digest)
		require.NoError(t, err)
		assert.Equal(t, l.Digest.String(), vinfo.Labels[labels.VariantBackRefKey(conv.Variant())])
	}

	// Without the converted image, the variants live on through their sources.
	require.NoError(t, f.Store.ImageStore().Delete(f.Ctx, "example.com/app:esgz"))
	f.GC(t)
	for _, v := range variants {
		_, err := f.CS.Info(f.Ctx, v.Digest)
		require.NoError(t, err, "variant %s collected while its source lives", v.Digest)
	}
	// Without the source image, sources and variants go together.
	require.NoError(t, f.Store.ImageStore().Delete(f.Ctx, "example.com/app:v1"))
	f.GC(t)
	for i := range variants {
		for _, d := range []digest.Digest{srcLayers[i].Digest, variants[i].Digest} {
			_, err := f.CS.Info(f.Ctx, d)
			assert.Error(t, err, "%s outlived its image", d)
		}
	}
	assert.Empty(t, f.ContentState(t))
}

func TestCancelledConversionLeavesNothing(t *testing.T) {
	f := convertertest.NewFixture(t, converter.WithWorkers(1))
	var layers []imagegen.Layer
	for i := range 3 {
		tarball := imagegen.TarBytes([]imagegen.Entry{convertertest.File("big", convertertest.RandomBytes(int64(10+i), 8<<20))})
		layers = append(layers, imagegen.Layer{MediaType: ocispec.MediaTypeImageLayerGzip, Blob: imagegen.Compress(tarball, "gzip")})
	}
	_, err := imagegen.Store(f.Ctx, f.CS, f.Store.ImageStore(), imagegen.Image{Name: "big:v1", Layers: layers})
	require.NoError(t, err)
	before := f.ContentState(t)

	conv, err := stargz.NewEStargz(stargz.DefaultEStargzOptions())
	require.NoError(t, err)
	progress := converter.NewProgress()
	ctx, cancel := context.WithCancel(f.Ctx)
	go func() {
		// Cancel once the first layer is committed (with one worker, the next
		// is then under way): what that layer wrote must not outlive the lease.
		for ctx.Err() == nil {
			for _, s := range progress.Snapshot() {
				if s.State == converter.StateCommitted {
					cancel()
				}
			}
			time.Sleep(time.Millisecond)
		}
	}()
	_, err = f.Conv.ConvertImage(ctx, f.Store.ImageStore(), "big:v1", "big:esgz", converter.ImageOptions{Layers: converter.Every(conv), Progress: progress})
	require.ErrorIs(t, err, context.Canceled)

	ls, err := f.Store.LeaseManager().List(f.Ctx)
	require.NoError(t, err)
	assert.Empty(t, ls, "every lease of the conversion is gone")
	f.GC(t)
	assert.Equal(t, before, f.ContentState(t), "nothing of the cancelled conversion remains")
	_, err = f.Store.ImageStore().Get(f.Ctx, "big:esgz")
	assert.Error(t, err)

	// The retry converts everything.
	_, err = f.Conv.ConvertImage(f.Ctx, f.Store.ImageStore(), "big:v1", "big:esgz", converter.ImageOptions{Layers: converter.Every(conv)})
	require.NoError(t, err)
}

func TestConvertImagePlatforms(t *testing.T) {
	f := convertertest.NewFixture(t)
	var manifests []ocispec.Descriptor
	for _, arch := range []string{"amd64", "arm64"} {
		p := ocispec.Platform{OS: "linux", Architecture: arch}
		tarball := imagegen.TarBytes([]imagegen.Entry{convertertest.File("arch", []byte(arch))})
		m, err := imagegen.Store(f.Ctx, f.CS, f.Store.ImageStore(), imagegen.Image{Name: "multi:" + arch, Platform: &p,
			Layers: []imagegen.Layer{{MediaType: ocispec.MediaTypeImageLayerGzip, Blob: imagegen.Compress(tarball, "gzip")}}})
		require.NoError(t, err)
		manifests = append(manifests, m)
	}
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: manifests}
	idx.SchemaVersion = 2
	b, _ := json.Marshal(idx)
	idesc := f.PutBlob(t, b, ocispec.MediaTypeImageIndex, map[string]string{
		"containerd.io/gc.ref.content.m.0": manifests[0].Digest.String(), "containerd.io/gc.ref.content.m.1": manifests[1].Digest.String()})
	_, err := f.Store.ImageStore().Create(f.Ctx, images.Image{Name: "multi:all", Target: idesc})
	require.NoError(t, err)
	conv, err := stargz.NewEStargz(stargz.DefaultEStargzOptions())
	require.NoError(t, err)

	for _, tc := range []struct {
		name     string
		matcher  platforms.MatchComparer
		wantArch []string
	}{
		{"all platforms", nil, []string{"amd64", "arm64"}},
		{"arm64 only", platforms.Only(ocispec.Platform{OS: "linux", Architecture: "arm64"}), []string{"arm64"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := f.Conv.ConvertImage(f.Ctx, f.Store.ImageStore(), "multi:all", "multi:esgz", converter.ImageOptions{Layers: converter.Every(conv), Platforms: tc.matcher})
			require.NoError(t, err)
			out := convertertest.ReadJSON[ocispec.Index](t, f, res.Image.Target)
			var arches []string
			for _, m := range out.Manifests {
				arches = append(arches, m.Platform.Architecture)
				ml := convertertest.ReadJSON[ocispec.Manifest](t, f, m)
				assert.NotEmpty(t, ml.Layers[0].Annotations[labels.TOCDigestAnnotation])
			}
			assert.Equal(t, tc.wantArch, arches)
		})
	}
	_, err = f.Conv.ConvertImage(f.Ctx, f.Store.ImageStore(), "multi:all", "multi:none",
		converter.ImageOptions{Layers: converter.Every(conv), Platforms: platforms.Only(ocispec.Platform{OS: "windows", Architecture: "amd64"})})
	require.Error(t, err)
}

// A layer converted by a conversion that has not linked it yet (its image is
// still being converted) is reused, not converted again.
func TestUnlinkedConversionIsReused(t *testing.T) {
	f := convertertest.NewFixture(t)
	conv, err := stargz.NewEStargz(stargz.DefaultEStargzOptions())
	require.NoError(t, err)
	desc := f.PutLayer(t, imagegen.TarBytes(convertertest.Cases()["symlinks"]), "gzip")
	first, err := f.Conv.ConvertLayer(f.Ctx, conv, desc, nil)
	require.NoError(t, err)
	second, err := f.Conv.ConvertLayer(f.Ctx, conv, desc, nil)
	require.NoError(t, err)
	assert.Equal(t, int64(1), f.Conv.Conversions())
	assert.Equal(t, first.Desc, second.Desc)
	require.NoError(t, f.Conv.Link(f.Ctx, first))
	third, err := f.Conv.ConvertLayer(f.Ctx, conv, desc, nil)
	require.NoError(t, err)
	assert.Equal(t, converter.StateCached, third.State, "once linked, the label answers")
}

// The image walk's append step, which nydus's bootstrap merge uses: the
// appended layer comes last, with its diffID in the config and its GC label
// on the manifest.
func TestAppendedLayerRewritesManifestAndConfig(t *testing.T) {
	f := convertertest.NewFixture(t)
	src := f.TestImage(t, "example.com/app:v1", false)
	var extra ocispec.Descriptor
	extraDiffID := digest.FromString("bootstrap tar")
	hook := func(ctx context.Context, cs content.Store, layers []ocispec.Descriptor, oci bool) (*ocispec.Descriptor, digest.Digest, error) {
		assert.True(t, oci)
		assert.Len(t, layers, 3, "the hook sees the converted layers")
		blob := imagegen.Compress([]byte("bootstrap tar"), "gzip")
		extra = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(blob), Size: int64(len(blob)),
			Annotations: map[string]string{"containerd.io/snapshot/nydus-bootstrap": "true"}}
		return &extra, extraDiffID, content.WriteBlob(ctx, cs, "bootstrap", bytes.NewReader(blob), extra)
	}
	lc, err := stargz.NewEStargz(stargz.DefaultEStargzOptions())
	require.NoError(t, err)
	res, err := f.Conv.ConvertImage(f.Ctx, f.Store.ImageStore(), "example.com/app:v1", "example.com/app:merged",
		converter.ImageOptions{Layers: converter.Every(lc), AppendLayer: hook})
	require.NoError(t, err)
	m := convertertest.ReadJSON[ocispec.Manifest](t, f, res.Image.Target)
	require.Len(t, m.Layers, 4)
	assert.Equal(t, extra.Digest, m.Layers[3].Digest)
	cfg := convertertest.ReadJSON[ocispec.Image](t, f, m.Config)
	require.Len(t, cfg.RootFS.DiffIDs, 4)
	assert.Equal(t, extraDiffID, cfg.RootFS.DiffIDs[3])
	before := convertertest.ReadJSON[ocispec.Image](t, f, convertertest.ReadJSON[ocispec.Manifest](t, f, src).Config)
	assert.NotEqual(t, before.RootFS.DiffIDs[0], cfg.RootFS.DiffIDs[0], "converted layers have their new diffIDs")
	info, err := f.CS.Info(f.Ctx, res.Image.Target.Digest)
	require.NoError(t, err)
	assert.Equal(t, extra.Digest.String(), info.Labels["containerd.io/gc.ref.content.l.3"])
	// And the appended blob lives with the image.
	f.GC(t)
	_, err = f.CS.Info(f.Ctx, extra.Digest)
	require.NoError(t, err)
}

// A layer in the store is queued until a worker takes it, never "fetching";
// a layer the hook fetches is "fetching" while it does.
func TestProgressSaysFetchingOnlyWhileFetching(t *testing.T) {
	for _, fetch := range []bool{false, true} {
		f := convertertest.NewFixture(t)
		f.TestImage(t, "example.com/app:v1", false)
		lc, err := stargz.NewEStargz(stargz.DefaultEStargzOptions())
		require.NoError(t, err)
		progress := converter.NewProgress()
		seen := map[converter.LayerState]bool{}
		stop := make(chan struct{})
		polled := make(chan struct{})
		go func() {
			defer close(polled)
			for {
				for _, s := range progress.Snapshot() {
					seen[s.State] = true
				}
				select {
				case <-stop:
					return
				case <-time.After(time.Millisecond):
				}
			}
		}()
		_, err = f.Conv.ConvertImage(f.Ctx, f.Store.ImageStore(), "example.com/app:v1", "example.com/app:esgz", converter.ImageOptions{
			Layers: converter.Every(lc), Progress: progress,
			EnsureLayer: func(_ context.Context, layer, _ ocispec.Descriptor, _ int, report converter.LayerReport) (converter.Ensured, error) {
				if fetch {
					report.Fetching().Add(layer.Size)
					time.Sleep(50 * time.Millisecond)
					return converter.Ensured{Desc: layer, Origin: converter.OriginRegistry}, nil
				}
				return converter.Ensured{Desc: layer}, nil
			},
		})
		close(stop)
		<-polled
		require.NoError(t, err)
		assert.Equal(t, fetch, seen[converter.StateFetching], "fetching seen: %v", seen)
		for _, s := range progress.Snapshot() {
			assert.Equal(t, converter.StateCommitted, s.State)
			if fetch {
				assert.Equal(t, converter.OriginRegistry, s.Origin)
			}
		}
	}
}

// A new target does not take the labels about its source image: a rule's
// failure, CRI's pin (which would keep the output from kubelet's image GC
// for ever). Others it takes.
func TestNewTargetDoesNotTakeTheSourcesOwnLabels(t *testing.T) {
	f := convertertest.NewFixture(t)
	f.TestImage(t, "example.com/app:v1", false)
	is := f.Store.ImageStore()
	img, err := is.Get(f.Ctx, "example.com/app:v1")
	require.NoError(t, err)
	img.Labels = map[string]string{labels.CRIPinned: "pinned", labels.RuleFailed: "estargz: boom", "team": "a"}
	_, err = is.Update(f.Ctx, img, "labels")
	require.NoError(t, err)
	lc, err := stargz.NewZstdChunked(stargz.DefaultZstdChunkedOptions())
	require.NoError(t, err)
	res, err := f.Conv.ConvertImage(f.Ctx, is, "example.com/app:v1", "example.com/app:zc", converter.ImageOptions{Layers: converter.Every(lc)})
	require.NoError(t, err)
	assert.Equal(t, map[string]string{labels.ImageConvertedFrom: "example.com/app:v1", "team": "a"}, res.Image.Labels)
}

// The source is held while it converts: deleting it and collecting garbage
// mid-conversion leaves the target whole (its unchanged config and kept
// layer were only the source's).
func TestSourceDeletedMidConversionLeavesTheTargetWhole(t *testing.T) {
	f := convertertest.NewFixture(t)
	f.TestImage(t, "example.com/app:v1", false)
	is := f.Store.ImageStore()
	lc, err := stargz.NewZstdChunked(stargz.DefaultZstdChunkedOptions()) // keeps diff_ids: the config stays the source's
	require.NoError(t, err)
	var once sync.Once
	res, err := f.Conv.ConvertImage(f.Ctx, is, "example.com/app:v1", "example.com/app:zc", converter.ImageOptions{
		Layers: converter.Every(lc),
		EnsureLayer: func(ctx context.Context, layer, _ ocispec.Descriptor, _ int, _ converter.LayerReport) (converter.Ensured, error) {
			once.Do(func() {
				require.NoError(t, is.Delete(ctx, "example.com/app:v1"))
				f.GC(t)
			})
			return converter.Ensured{Desc: layer}, nil
		},
	})
	require.NoError(t, err)
	f.GC(t) // the lease is gone: the target alone holds what it names
	m := convertertest.ReadJSON[ocispec.Manifest](t, f, res.Image.Target)
	for _, d := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
		_, err := f.CS.Info(f.Ctx, d.Digest)
		assert.NoError(t, err, "%s (%s) is still here", d.Digest, d.MediaType)
	}
}
