package converter_test

import (
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
	"github.com/lazyconv/lazyconv/internal/imagegen"
	"github.com/lazyconv/lazyconv/labels"
)

// testImage stores a three-layer image (gzip, zstd, uncompressed) under name.
func testImage(t testing.TB, f *fixture, name string, docker bool) ocispec.Descriptor {
	t.Helper()
	cases := losslessCases()
	var layers []imagegen.Layer
	for i, tc := range []struct {
		entries string
		comp    string
	}{{"regular files and dirs", "gzip"}, {"large file", "zstd"}, {"symlinks", ""}} {
		mt := ocispec.MediaTypeImageLayer
		if tc.comp != "" {
			mt += "+" + tc.comp
		}
		if docker && i == 0 {
			mt = images.MediaTypeDockerSchema2LayerGzip
		}
		layers = append(layers, imagegen.Layer{MediaType: mt, Blob: imagegen.Compress(imagegen.TarBytes(cases[tc.entries]), tc.comp)})
	}
	desc, err := imagegen.Store(f.ctx, f.cs, f.store.ImageStore(), imagegen.Image{Name: name, Layers: layers, Docker: docker})
	require.NoError(t, err)
	return desc
}

func readJSON[T any](t testing.TB, f *fixture, desc ocispec.Descriptor) T {
	t.Helper()
	b, err := content.ReadBlob(f.ctx, f.cs, desc)
	require.NoError(t, err)
	var v T
	require.NoError(t, json.Unmarshal(b, &v))
	return v
}

func TestConvertImageEStargz(t *testing.T) {
	for _, docker := range []bool{false, true} {
		t.Run(map[bool]string{false: "oci", true: "docker-to-oci"}[docker], func(t *testing.T) {
			f := newFixture(t)
			src := testImage(t, f, "example.com/app:v1", docker)
			conv, err := converter.NewEStargz()
			require.NoError(t, err)
			progress := converter.NewProgress()
			res, err := f.conv.ConvertImage(f.ctx, f.store.ImageStore(), "example.com/app:v1", "example.com/app:esgz",
				converter.ImageOptions{Layer: conv, DockerToOCI: true, Progress: progress})
			require.NoError(t, err)
			require.NotEqual(t, src.Digest, res.Image.Target.Digest)
			assert.Equal(t, ocispec.MediaTypeImageManifest, res.Image.Target.MediaType)

			m := readJSON[ocispec.Manifest](t, f, res.Image.Target)
			cfg := readJSON[ocispec.Image](t, f, m.Config)
			require.Len(t, m.Layers, 3)
			assert.Equal(t, ocispec.MediaTypeImageConfig, m.Config.MediaType)
			minfo, err := f.cs.Info(f.ctx, res.Image.Target.Digest)
			require.NoError(t, err)
			assert.Equal(t, m.Config.Digest.String(), minfo.Labels["containerd.io/gc.ref.content.config"])
			for i, l := range m.Layers {
				assert.Equal(t, ocispec.MediaTypeImageLayerGzip, l.MediaType)
				assert.NotEmpty(t, l.Annotations[labels.TOCDigestAnnotation])
				diffID, err := images.GetDiffID(f.ctx, f.cs, l)
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
			before := f.conv.Conversions()
			again, err := f.conv.ConvertImage(f.ctx, f.store.ImageStore(), "example.com/app:v1", "example.com/app:esgz2",
				converter.ImageOptions{Layer: conv, DockerToOCI: true})
			require.NoError(t, err)
			assert.Equal(t, before, f.conv.Conversions())
			assert.Equal(t, res.Image.Target.Digest, again.Image.Target.Digest, "same layers, same manifest")
			for _, l := range again.Layers {
				assert.Equal(t, converter.StateCached, l.State)
			}
		})
	}
}

func TestConvertImageConcurrentRequestsConvertEachLayerOnce(t *testing.T) {
	f := newFixture(t)
	testImage(t, f, "example.com/app:v1", false)
	conv, err := converter.NewEStargz()
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
			res, err := f.conv.ConvertImage(f.ctx, f.store.ImageStore(), "example.com/app:v1", "example.com/app:esgz",
				converter.ImageOptions{Layer: conv})
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
	assert.Equal(t, int64(3), f.conv.Conversions(), "each of the 3 layers converted exactly once")
}

func TestVariantsLiveWithTheirSource(t *testing.T) {
	f := newFixture(t)
	src := testImage(t, f, "example.com/app:v1", false)
	conv, err := converter.NewEStargz()
	require.NoError(t, err)
	res, err := f.conv.ConvertImage(f.ctx, f.store.ImageStore(), "example.com/app:v1", "example.com/app:esgz", converter.ImageOptions{Layer: conv})
	require.NoError(t, err)
	srcLayers := readJSON[ocispec.Manifest](t, f, src).Layers
	variants := readJSON[ocispec.Manifest](t, f, res.Image.Target).Layers

	for i, l := range srcLayers {
		info, err := f.cs.Info(f.ctx, l.Digest)
		require.NoError(t, err)
		assert.Equal(t, variants[i].Digest.String(), info.Labels[labels.VariantKey("estargz")])
		assert.NotEmpty(t, info.Labels[labels.Uncompressed], "the source's diffID is cached on the way")
		vinfo, err := f.cs.Info(f.ctx, variants[i].Digest)
		require.NoError(t, err)
		assert.Equal(t, l.Digest.String(), vinfo.Labels[labels.VariantBackRefKey("estargz")])
	}

	// Without the converted image, the variants live on through their sources.
	require.NoError(t, f.store.ImageStore().Delete(f.ctx, "example.com/app:esgz"))
	f.gc(t)
	for _, v := range variants {
		_, err := f.cs.Info(f.ctx, v.Digest)
		require.NoError(t, err, "variant %s collected while its source lives", v.Digest)
	}
	// Without the source image, sources and variants go together.
	require.NoError(t, f.store.ImageStore().Delete(f.ctx, "example.com/app:v1"))
	f.gc(t)
	for i := range variants {
		for _, d := range []digest.Digest{srcLayers[i].Digest, variants[i].Digest} {
			_, err := f.cs.Info(f.ctx, d)
			assert.Error(t, err, "%s outlived its image", d)
		}
	}
	assert.Empty(t, f.contentState(t))
}

func TestCancelledConversionLeavesNothing(t *testing.T) {
	f := newFixture(t, converter.WithWorkers(1))
	var layers []imagegen.Layer
	for i := range 3 {
		tarball := imagegen.TarBytes([]imagegen.Entry{file("big", randomBytes(int64(10+i), 8<<20))})
		layers = append(layers, imagegen.Layer{MediaType: ocispec.MediaTypeImageLayerGzip, Blob: imagegen.Compress(tarball, "gzip")})
	}
	_, err := imagegen.Store(f.ctx, f.cs, f.store.ImageStore(), imagegen.Image{Name: "big:v1", Layers: layers})
	require.NoError(t, err)
	before := f.contentState(t)

	conv, err := converter.NewEStargz()
	require.NoError(t, err)
	progress := converter.NewProgress()
	ctx, cancel := context.WithCancel(f.ctx)
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
	_, err = f.conv.ConvertImage(ctx, f.store.ImageStore(), "big:v1", "big:esgz", converter.ImageOptions{Layer: conv, Progress: progress})
	require.ErrorIs(t, err, context.Canceled)

	ls, err := f.store.LeaseManager().List(f.ctx)
	require.NoError(t, err)
	assert.Empty(t, ls, "every lease of the conversion is gone")
	f.gc(t)
	assert.Equal(t, before, f.contentState(t), "nothing of the cancelled conversion remains")
	_, err = f.store.ImageStore().Get(f.ctx, "big:esgz")
	assert.Error(t, err)

	// The retry converts everything.
	_, err = f.conv.ConvertImage(f.ctx, f.store.ImageStore(), "big:v1", "big:esgz", converter.ImageOptions{Layer: conv})
	require.NoError(t, err)
}

func TestConvertImagePlatforms(t *testing.T) {
	f := newFixture(t)
	var manifests []ocispec.Descriptor
	for _, arch := range []string{"amd64", "arm64"} {
		p := ocispec.Platform{OS: "linux", Architecture: arch}
		tarball := imagegen.TarBytes([]imagegen.Entry{file("arch", []byte(arch))})
		m, err := imagegen.Store(f.ctx, f.cs, f.store.ImageStore(), imagegen.Image{Name: "multi:" + arch, Platform: &p,
			Layers: []imagegen.Layer{{MediaType: ocispec.MediaTypeImageLayerGzip, Blob: imagegen.Compress(tarball, "gzip")}}})
		require.NoError(t, err)
		manifests = append(manifests, m)
	}
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: manifests}
	idx.SchemaVersion = 2
	b, _ := json.Marshal(idx)
	idesc := putBlob(t, f, b, ocispec.MediaTypeImageIndex, map[string]string{
		"containerd.io/gc.ref.content.m.0": manifests[0].Digest.String(), "containerd.io/gc.ref.content.m.1": manifests[1].Digest.String()})
	_, err := f.store.ImageStore().Create(f.ctx, images.Image{Name: "multi:all", Target: idesc})
	require.NoError(t, err)
	conv, err := converter.NewEStargz()
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
			res, err := f.conv.ConvertImage(f.ctx, f.store.ImageStore(), "multi:all", "multi:esgz", converter.ImageOptions{Layer: conv, Platforms: tc.matcher})
			require.NoError(t, err)
			out := readJSON[ocispec.Index](t, f, res.Image.Target)
			var arches []string
			for _, m := range out.Manifests {
				arches = append(arches, m.Platform.Architecture)
				ml := readJSON[ocispec.Manifest](t, f, m)
				assert.NotEmpty(t, ml.Layers[0].Annotations[labels.TOCDigestAnnotation])
			}
			assert.Equal(t, tc.wantArch, arches)
		})
	}
	_, err = f.conv.ConvertImage(f.ctx, f.store.ImageStore(), "multi:all", "multi:none",
		converter.ImageOptions{Layer: conv, Platforms: platforms.Only(ocispec.Platform{OS: "windows", Architecture: "amd64"})})
	require.Error(t, err)
}

// A layer converted by a conversion that has not linked it yet (its image is
// still being converted) is reused, not converted again.
func TestUnlinkedConversionIsReused(t *testing.T) {
	f := newFixture(t)
	conv, err := converter.NewEStargz()
	require.NoError(t, err)
	desc := putLayer(t, f, imagegen.TarBytes(losslessCases()["symlinks"]), "gzip")
	first, err := f.conv.ConvertLayer(f.ctx, conv, desc, nil)
	require.NoError(t, err)
	second, err := f.conv.ConvertLayer(f.ctx, conv, desc, nil)
	require.NoError(t, err)
	assert.Equal(t, int64(1), f.conv.Conversions())
	assert.Equal(t, first.Desc, second.Desc)
	require.NoError(t, f.conv.Link(f.ctx, first))
	third, err := f.conv.ConvertLayer(f.ctx, conv, desc, nil)
	require.NoError(t, err)
	assert.Equal(t, converter.StateCached, third.State, "once linked, the label answers")
}
