package service_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/core/events/exchange"
	"github.com/containerd/typeurl/v2"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/internal/imagegen"
	"github.com/lazyconv/lazyconv/labels"
	"github.com/lazyconv/lazyconv/rules"
	"github.com/lazyconv/lazyconv/service"
)

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		require.True(t, time.Now().Before(deadline), "timed out waiting: %s", what)
		time.Sleep(20 * time.Millisecond)
	}
}

// startRules runs f's rules on the exchange ex, reconciling the fixture's
// namespace, until ctx is done.
func startRules(t *testing.T, ctx context.Context, f *fixture, ex *exchange.Exchange) *rules.Engine {
	t.Helper()
	e, err := f.svc.StartRules(ctx, service.RulesEnv{Events: ex, Publisher: ex,
		Namespaces: func(context.Context) ([]string, error) { return []string{"test"}, nil }})
	require.NoError(t, err)
	return e
}

// Rules convert what containerd's image events announce, on containerd's
// own event exchange (here the test publishes what its images service would).
func TestRulesConvertAnnouncedImages(t *testing.T) {
	cfg := service.DefaultConfig()
	cfg.Rules = []rules.Rule{{Match: "example.com/team/*", Format: "estargz", TagSuffix: "-esgz"}}
	f := newFixture(t, cfg)
	ex := exchange.NewExchange()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	failures, _ := ex.Subscribe(ctx, `topic=="`+rules.FailedTopic+`"`)
	startRules(t, ctx, f, ex) // subscribed when it returns

	store := func(name string, layer []byte) {
		_, err := imagegen.Store(f.ctx, f.store.ContentStore(), f.store.ImageStore(), imagegen.Image{Name: name,
			Layers: []imagegen.Layer{{MediaType: ocispec.MediaTypeImageLayerGzip, Blob: imagegen.Compress(layer, "gzip")}}})
		require.NoError(t, err)
		require.NoError(t, ex.Publish(f.ctx, "/images/create", &eventstypes.ImageCreate{Name: name}))
	}
	images := func() map[string]bool {
		imgs, err := f.store.ImageStore().List(f.ctx)
		require.NoError(t, err)
		out := map[string]bool{}
		for _, img := range imgs {
			out[img.Name] = true
		}
		return out
	}
	good := imagegen.TarBytes(convertertest.Cases()["symlinks"])
	store("example.com/other/app:v1", good)
	store("example.com/team/app:v1", good)
	eventually(t, "the matching image is converted", func() bool { return images()["example.com/team/app:v1-esgz"] })
	assert.False(t, images()["example.com/other/app:v1-esgz"], "a name no rule matches is left alone")
	time.Sleep(200 * time.Millisecond)
	assert.False(t, images()["example.com/team/app:v1-esgz-esgz"], "a conversion's output is never converted again")

	// A failure: logged, published, and labelled on the source.
	store("example.com/team/bad:v1", imagegen.TarBytes([]imagegen.Entry{convertertest.File("../../escape", []byte("x"))}))
	select {
	case ev := <-failures:
		v, err := typeurl.UnmarshalAny(ev.Event)
		require.NoError(t, err)
		failed := v.(*rules.FailedEvent)
		assert.Equal(t, "example.com/team/bad:v1", failed.Image)
		assert.Contains(t, failed.Error, "climbs out")
	case <-time.After(30 * time.Second):
		t.Fatal("no failure event")
	}
	eventually(t, "the failure is labelled on the source", func() bool {
		img, err := f.store.ImageStore().Get(f.ctx, "example.com/team/bad:v1")
		return err == nil && img.Labels[labels.RuleFailed] != ""
	})
	// Fixed (same name, another target): converted, and the label goes.
	store("example.com/team/bad:v1", good)
	eventually(t, "the fixed image converts and loses its failure label", func() bool {
		img, err := f.store.ImageStore().Get(f.ctx, "example.com/team/bad:v1")
		return err == nil && img.Labels[labels.RuleFailed] == "" && images()["example.com/team/bad:v1-esgz"]
	})
}

func TestRulesAreValidated(t *testing.T) {
	for _, raw := range []map[string]any{
		{"rules": []any{map[string]any{"match": "x/*", "format": "estargz"}}},                             // no suffix
		{"rules": []any{map[string]any{"match": "[", "format": "estargz", "tag_suffix": "-e"}}},           // bad glob
		{"rules": []any{map[string]any{"match": "x/*", "format": "squashfs", "tag_suffix": "-e"}}},        // unknown format
		{"rules": []any{map[string]any{"match": "x/*", "format": "estargz", "tag_suffix": "-e", "x": 1}}}, // unknown key
		{"rules": []any{map[string]any{"match": "x/*", "format": "estargz", "tag_suffix": "-e",
			"options": map[string]any{"compression-level": int64(42)}}}}, // bad option
		{"rules": []any{map[string]any{"match": "x/*", "format": "estargz", "tag_suffix": "-e", "push": "yes"}}}, // push is a boolean
		{"rule_queue_length": int64(0)},
		{"disable_registry_cache": "true"},
		{"rules": []any{map[string]any{"match": "x/*", "format": "estargz", "tag_suffix": "-e"},
			map[string]any{"match": "y/*", "format": "zstdchunked", "tag_suffix": "-e"}}}, // one suffix, two rules
		{"rules": []any{map[string]any{"match": "x/*", "format": "estargz", "tag_suffix": "-e/x"}}},                                      // a suffix that is not a tag's
		{"rules": []any{map[string]any{"match": "x/*", "format": "estargz", "tag_suffix": "-e", "platforms": []any{"linux/amd64/x/y"}}}}, // bad platform
		{"rule_retries": int64(-1)},
		{"reconcile_interval": "soon"},
		{"rule_retry_backoff": int64(5)},
		{"notifications": map[string]any{"address": "127.0.0.1:0", "tokn": "x"}},
		{"notifications": map[string]any{"max_body_bytes": int64(0)}},
		{"notifications": map[string]any{"address": "127.0.0.1:0", "namespace": ""}},
	} {
		_, err := service.ParseConfig(raw)
		assert.Error(t, err, "%v", raw)
	}
	cfg, err := service.ParseConfig(map[string]any{"rules": []any{map[string]any{"match": "x/*", "format": "zstdchunked", "tag_suffix": "-zc",
		"namespaces": []any{"builds"}, "options": map[string]any{"compression-level": int64(9)}, "push": true,
		"platforms": []any{"linux/arm64"}, "prune_outputs": true}},
		"disable_registry_cache": true, "rule_retries": int64(2), "rule_retry_backoff": "500ms", "reconcile_interval": "1m",
		"notifications": map[string]any{"address": "127.0.0.1:5050", "token": "t", "max_body_bytes": int64(4096), "namespace": "ci"}})
	require.NoError(t, err)
	require.Len(t, cfg.Rules, 1)
	assert.Equal(t, map[string]string{"compression-level": "9"}, cfg.Rules[0].Options)
	assert.True(t, cfg.Rules[0].Push)
	assert.True(t, cfg.DisableRegistryCache)
	assert.Equal(t, []string{"linux/arm64"}, cfg.Rules[0].Platforms)
	assert.True(t, cfg.Rules[0].PruneOutputs)
	assert.Equal(t, 2, cfg.RuleRetries)
	assert.Equal(t, 500*time.Millisecond, cfg.RuleRetryBackoff)
	assert.Equal(t, time.Minute, cfg.ReconcileInterval)
	assert.Equal(t, service.NotificationsConfig{Address: "127.0.0.1:5050", Token: "t", MaxBodyBytes: 4096, Namespace: "ci"}, cfg.Notifications)
	dumped := cfg.TOML()
	assert.NotContains(t, fmt.Sprint(dumped), "token", "the token is not printed")
	back, err := service.ParseConfig(dumped)
	require.NoError(t, err)
	back.Notifications.Token = cfg.Notifications.Token
	assert.Equal(t, cfg, back, "TOML() reads back as itself, but for the token")
}
