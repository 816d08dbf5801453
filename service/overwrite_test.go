package service_test

import (
	"context"
	"testing"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/core/events/exchange"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/internal/imagegen"
	"github.com/lazyconv/lazyconv/labels"
	"github.com/lazyconv/lazyconv/rules"
	"github.com/lazyconv/lazyconv/service"
)

// storeOther stores an image lazyconv did not make (as a pull or an import
// would) under name.
func storeOther(t *testing.T, f *fixture, name, body string) ocispec.Descriptor {
	t.Helper()
	img := imagegen.Image{Name: name, Layers: []imagegen.Layer{{MediaType: ocispec.MediaTypeImageLayerGzip,
		Blob: imagegen.Compress(imagegen.TarBytes([]imagegen.Entry{file("other", body)}), "gzip")}}}
	desc, err := imagegen.Store(f.ctx, f.store.ContentStore(), f.store.ImageStore(), img)
	require.NoError(t, err)
	return desc
}

func TestConvertOverwritesOnlyWhatLazyconvMadeUnlessAsked(t *testing.T) {
	for _, tc := range []struct {
		name string
		// setup prepares the store; req is then converted.
		setup func(t *testing.T, f *fixture)
		req   *api.ConvertRequest
		// refused: AlreadyExists, and the target is left as it was.
		refused bool
	}{
		{"a new target is created", func(*testing.T, *fixture) {},
			&api.ConvertRequest{Source: "app:v1", Target: "app:esgz"}, false},
		{"an image lazyconv did not make is refused", func(t *testing.T, f *fixture) { storeOther(t, f, "app:esgz", "theirs") },
			&api.ConvertRequest{Source: "app:v1", Target: "app:esgz"}, true},
		{"an image lazyconv did not make is replaced with overwrite", func(t *testing.T, f *fixture) { storeOther(t, f, "app:esgz", "theirs") },
			&api.ConvertRequest{Source: "app:v1", Target: "app:esgz", Overwrite: true}, false},
		{"lazyconv's own output is converted onto again", func(t *testing.T, f *fixture) {
			convert(t, f, &api.ConvertRequest{Source: "app:v1", Target: "app:esgz", Format: "zstdchunked"})
		},
			&api.ConvertRequest{Source: "app:v1", Target: "app:esgz"}, false},
		{"lazyconv's output of another source is converted onto", func(t *testing.T, f *fixture) {
			storeOther(t, f, "app:v2", "v2")
			convert(t, f, &api.ConvertRequest{Source: "app:v2", Target: "app:esgz"})
		}, &api.ConvertRequest{Source: "app:v1", Target: "app:esgz"}, false},
		{"in place, an image lazyconv did not make is refused", func(*testing.T, *fixture) {},
			&api.ConvertRequest{Source: "app:v1", Target: "app:v1"}, true},
		{"in place with overwrite", func(*testing.T, *fixture) {},
			&api.ConvertRequest{Source: "app:v1", Target: "app:v1", Overwrite: true}, false},
		{"in place, an image lazyconv made", func(t *testing.T, f *fixture) {
			convert(t, f, &api.ConvertRequest{Source: "app:v1", Target: "app:esgz"})
		},
			&api.ConvertRequest{Source: "app:esgz", Target: "app:esgz", Format: "zstdchunked"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, service.DefaultConfig())
			tc.setup(t, f)
			before, beforeErr := f.store.ImageStore().Get(f.ctx, tc.req.GetTarget())
			tc.req.AllPlatforms = true
			err := f.svc.ConvertImage(f.ctx, tc.req, func(*api.ConvertEvent) error { return nil })
			after, getErr := f.store.ImageStore().Get(f.ctx, tc.req.GetTarget())
			require.NoError(t, getErr)
			if tc.refused {
				require.Error(t, err)
				assert.True(t, errdefs.IsAlreadyExists(err), "AlreadyExists: %v", err)
				assert.Contains(t, err.Error(), `"`+tc.req.GetTarget()+`"`, "the error names the image")
				assert.Contains(t, err.Error(), "--overwrite", "the error names the flag")
				require.NoError(t, beforeErr)
				assert.Equal(t, before.Target, after.Target, "the target is left as it was")
				assert.NotContains(t, after.Labels, labels.ImageConvertedFrom)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.req.GetSource(), after.Labels[labels.ImageConvertedFrom], "the target is labelled as lazyconv's")
			if beforeErr == nil {
				assert.NotEqual(t, before.Target.Digest, after.Target.Digest, "the target was replaced")
			}
		})
	}
}

// convert runs a conversion that must succeed.
func convert(t *testing.T, f *fixture, req *api.ConvertRequest) {
	t.Helper()
	req.AllPlatforms = true
	require.NoError(t, f.svc.ConvertImage(f.ctx, req, func(*api.ConvertEvent) error { return nil }))
}

// A rule converts each new version of its source onto the same output: the
// output is lazyconv's, so no overwrite is needed; an output name taken by
// an image lazyconv did not make is refused and reported as a rule failure.
func TestRulesConvertOntoTheirOwnOutput(t *testing.T) {
	cfg := service.DefaultConfig()
	cfg.Rules = []rules.Rule{{Match: "example.com/*", Format: "estargz", TagSuffix: "-esgz"}}
	f := newFixture(t, cfg)
	ex := exchange.NewExchange()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	startRules(t, ctx, f, ex)
	announce := func(name string) {
		require.NoError(t, ex.Publish(f.ctx, "/images/update", &eventstypes.ImageUpdate{Name: name}))
	}
	get := func(name string) (images.Image, error) { return f.store.ImageStore().Get(f.ctx, name) }
	converted := func(name string) ocispec.Descriptor {
		var img images.Image
		eventually(t, name+" is converted", func() bool {
			var err error
			img, err = get(name + "-esgz")
			return err == nil && img.Labels[labels.ImageConvertedFrom] == name
		})
		return img.Target
	}

	storeOther(t, f, "example.com/app:v1", "one")
	announce("example.com/app:v1")
	first := converted("example.com/app:v1")
	storeOther(t, f, "example.com/app:v1", "two")
	announce("example.com/app:v1")
	eventually(t, "the new version is converted onto the same output", func() bool {
		img, err := get("example.com/app:v1-esgz")
		return err == nil && img.Target.Digest != first.Digest
	})

	theirs := storeOther(t, f, "example.com/taken:v1-esgz", "theirs")
	storeOther(t, f, "example.com/taken:v1", "source")
	announce("example.com/taken:v1")
	eventually(t, "the refusal is labelled on the source", func() bool {
		img, err := get("example.com/taken:v1")
		return err == nil && img.Labels[labels.RuleFailed] != ""
	})
	src, err := get("example.com/taken:v1")
	require.NoError(t, err)
	assert.Contains(t, src.Labels[labels.RuleFailed], "--overwrite")
	img, err := get("example.com/taken:v1-esgz")
	require.NoError(t, err)
	assert.Equal(t, theirs.Digest, img.Target.Digest, "an image lazyconv did not make is left alone")
}
