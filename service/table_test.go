package service_test

import (
	"fmt"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/internal/imagegen"
	"github.com/lazyconv/lazyconv/labels"
	"github.com/lazyconv/lazyconv/service"
)

// Every state crosses the wire by name and comes back as itself.
func TestEveryLayerStateCrossesTheWire(t *testing.T) {
	for _, tc := range []struct {
		local converter.LayerState
		wire  api.LayerState
	}{
		{converter.StateQueued, api.LayerState_LAYER_STATE_QUEUED},
		{converter.StateReading, api.LayerState_LAYER_STATE_READING},
		{converter.StateConverting, api.LayerState_LAYER_STATE_CONVERTING},
		{converter.StateCommitted, api.LayerState_LAYER_STATE_COMMITTED},
		{converter.StateCached, api.LayerState_LAYER_STATE_CACHED},
		{converter.StateKept, api.LayerState_LAYER_STATE_KEPT},
		{converter.StateFailed, api.LayerState_LAYER_STATE_FAILED},
		{converter.StateFetching, api.LayerState_LAYER_STATE_FETCHING},
		{converter.StateRebuilding, api.LayerState_LAYER_STATE_REBUILDING},
		{converter.StateShared, api.LayerState_LAYER_STATE_SHARED},
		{converter.StateVerifying, api.LayerState_LAYER_STATE_VERIFYING},
	} {
		t.Run(tc.local.String(), func(t *testing.T) {
			st := converter.LayerStatus{Digest: "sha256:00", State: tc.local, BytesIn: 3, BytesOut: 4}
			ev := service.LayerEvent(st)
			assert.Equal(t, tc.wire, ev.GetState())
			assert.Equal(t, st, service.LayerStatus(ev))
		})
	}
	assert.Len(t, api.LayerState_name, 11, "a new wire state needs a row above and in the service's map")
}

func TestConfigParsesTOMLValues(t *testing.T) {
	for _, tc := range []struct {
		name  string
		raw   map[string]any
		check func(t *testing.T, cfg service.Config, err error)
	}{
		{"empty means defaults", nil, func(t *testing.T, cfg service.Config, err error) {
			require.NoError(t, err)
			assert.Equal(t, service.DefaultConfig(), cfg)
		}},
		{"values as TOML decodes them", map[string]any{"workers": int64(3), "default_format": "zstdchunked"},
			func(t *testing.T, cfg service.Config, err error) {
				require.NoError(t, err)
				assert.Equal(t, 3, cfg.Workers)
				assert.Equal(t, "zstdchunked", cfg.DefaultFormat)
			}},
		{"unknown key", map[string]any{"estargz_level": int64(6)}, func(t *testing.T, _ service.Config, err error) {
			require.Error(t, err)
			assert.True(t, errdefs.IsInvalidArgument(err))
			assert.Contains(t, err.Error(), "default_format", "the error lists the known keys")
		}},
		{"wrong kind", map[string]any{"workers": "many"}, func(t *testing.T, _ service.Config, err error) {
			assert.True(t, errdefs.IsInvalidArgument(err), "%v", err)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := service.ParseConfig(tc.raw)
			tc.check(t, cfg, err)
		})
	}
	back, err := service.ParseConfig(service.DefaultConfig().TOML())
	require.NoError(t, err)
	assert.Equal(t, service.DefaultConfig(), back, "TOML() reads back as itself")
}

// The service's configuration keys config.toml.example has always had are
// still there (new options add keys); the format options it had
// ("estargz_compression_level") are refused, naming their format plugin's
// section, where they are now.
func TestConfigKeysAreStable(t *testing.T) {
	keys := map[string]any{}
	for k := range service.DefaultConfig().TOML() {
		keys[k] = nil
	}
	for _, k := range []string{"workers", "default_format", "require_lossless", "max_entries", "rule_queue_length"} {
		assert.Contains(t, keys, k)
	}
	for key, place := range map[string]string{
		"estargz_compression_level":     "compression_level in [plugins.'io.containerd.image-converter.v1.estargz']",
		"estargz_chunk_size":            "chunk_size in [plugins.'io.containerd.image-converter.v1.estargz']",
		"zstdchunked_compression_level": "compression_level in [plugins.'io.containerd.image-converter.v1.zstdchunked']",
		"nydus_builder_path":            "builder_path in [plugins.'io.containerd.image-converter.v1.nydus']",
	} {
		_, err := service.ParseConfig(map[string]any{key: int64(9)})
		require.Error(t, err, key)
		assert.True(t, errdefs.IsInvalidArgument(err), "%v", err)
		assert.Contains(t, err.Error(), place)
		assert.Contains(t, err.Error(), "has moved")
	}
}

func TestRequestOptions(t *testing.T) {
	level, chunk := int32(6), int64(4096)
	for _, tc := range []struct {
		name string
		req  *api.ConvertRequest
		want map[string]string
	}{
		{"none", &api.ConvertRequest{Format: "estargz"}, map[string]string{}},
		{"typed eStargz options", &api.ConvertRequest{Format: "estargz", Estargz: &api.EStargzOptions{CompressionLevel: &level, ChunkSize: &chunk}},
			map[string]string{"compression-level": "6", "chunk-size": "4096"}},
		{"typed options of another format are ignored", &api.ConvertRequest{Format: "zstdchunked", Estargz: &api.EStargzOptions{CompressionLevel: &level}},
			map[string]string{}},
		{"the map wins", &api.ConvertRequest{Format: "zstdchunked", Zstdchunked: &api.ZstdChunkedOptions{CompressionLevel: &level},
			Options: map[string]string{"compression-level": "19"}}, map[string]string{"compression-level": "19"}},
		{"nydus strings", &api.ConvertRequest{Format: "nydus", Nydus: &api.NydusOptions{Compressor: "none"}},
			map[string]string{"compressor": "none"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, service.RequestOptions(tc.req.GetFormat(), tc.req))
		})
	}
}

func TestRequestOptionsAreChecked(t *testing.T) {
	f := newFixture(t, service.DefaultConfig())
	for _, tc := range []struct {
		name    string
		format  string
		options map[string]string
		class   func(error) bool
	}{
		{"unknown option", "estargz", map[string]string{"speed": "fast"}, errdefs.IsInvalidArgument},
		{"not a number", "estargz", map[string]string{"compression-level": "max"}, errdefs.IsInvalidArgument},
		{"out of range", "zstdchunked", map[string]string{"compression-level": "23"}, errdefs.IsInvalidArgument},
		{"a format without options", "uncompress", map[string]string{"level": "1"}, errdefs.IsInvalidArgument},
		{"the service's own builder", "nydus", map[string]string{"builder-path": "/tmp/evil"}, errdefs.IsPermissionDenied},
		{"the service's own work dir", "nydus", map[string]string{"work-dir": "/"}, errdefs.IsPermissionDenied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := f.svc.ConvertImage(f.ctx, &api.ConvertRequest{Source: "app:v1", Target: "x", Format: tc.format, Options: tc.options},
				func(*api.ConvertEvent) error { return nil })
			require.Error(t, err)
			assert.True(t, tc.class(err), "%v", err)
		})
	}
	// Valid options reach the converter: the variant names them (the
	// pure-Go deflate, which every build has).
	events := 0
	require.NoError(t, f.svc.ConvertImage(f.ctx, &api.ConvertRequest{Source: "app:v1", Target: "app:l1", Format: "estargz",
		AllPlatforms: true, Options: map[string]string{"compression-level": "1", "deflate": "go"}}, func(*api.ConvertEvent) error { events++; return nil }))
	assert.Positive(t, events)
	assertVariantLinked(t, f, "estargz.deflate-go.level-1")
}

func TestExclusiveFlagsMessageNamesEveryFlag(t *testing.T) {
	msg := service.ExclusiveFlagsMessage()
	for _, fm := range service.Formats() {
		if fm.Flag {
			assert.Contains(t, msg, fmt.Sprintf("--%s", fm.Name))
		}
	}
	assert.Regexp(t, `^--estargz, --zstdchunked, .* and --[a-z-]+ exclude each other$`, msg)
}

func TestVerifyReportsEveryLayer(t *testing.T) {
	f := newFixture(t, service.DefaultConfig())
	require.NoError(t, f.svc.ConvertImage(f.ctx, &api.ConvertRequest{Source: "app:v1", Target: "app:esgz", AllPlatforms: true},
		func(*api.ConvertEvent) error { return nil }))
	resp, err := f.svc.VerifyImage(f.ctx, &api.VerifyRequest{Ref: "app:esgz", AllPlatforms: true})
	require.NoError(t, err)
	require.NotEmpty(t, resp.GetLayers())
	for _, l := range resp.GetLayers() {
		assert.Empty(t, l.GetError())
		assert.NotEmpty(t, l.GetTocDigest())
		assert.Positive(t, l.GetFiles())
	}
	// The source's layers are not eStargz: each one fails, with its reason.
	resp, err = f.svc.VerifyImage(f.ctx, &api.VerifyRequest{Ref: "app:v1", AllPlatforms: true})
	require.NoError(t, err)
	require.NotEmpty(t, resp.GetLayers())
	for _, l := range resp.GetLayers() {
		assert.Contains(t, l.GetError(), "annotation")
	}
	_, err = f.svc.VerifyImage(f.ctx, &api.VerifyRequest{Ref: "missing:v1"})
	assert.True(t, errdefs.IsNotFound(err), "%v", err)
}

// assertVariantLinked checks that some source layer links a variant of that name.
func assertVariantLinked(t *testing.T, f *fixture, variant string) {
	t.Helper()
	found := false
	require.NoError(t, f.store.ContentStore().Walk(f.ctx, func(info content.Info) error {
		if _, ok := labels.Variant(info, variant); ok {
			found = true
		}
		return nil
	}))
	assert.True(t, found, "a layer links variant %s", variant)
}

func TestNotLosslessIsReportedOnTheWire(t *testing.T) {
	for _, required := range []bool{false, true} {
		cfg := service.DefaultConfig()
		cfg.RequireLossless = required
		f := newFixture(t, cfg)
		img := imagegen.Image{Name: "sparse:v1", Layers: []imagegen.Layer{{MediaType: ocispec.MediaTypeImageLayerGzip,
			Blob: imagegen.Compress(convertertest.SparseTar(1<<20), "gzip")}}}
		_, err := imagegen.Store(f.ctx, f.store.ContentStore(), f.store.ImageStore(), img)
		require.NoError(t, err)
		var events []*api.ConvertEvent
		err = f.svc.ConvertImage(f.ctx, &api.ConvertRequest{Source: "sparse:v1", Target: "sparse:esgz", AllPlatforms: true},
			func(ev *api.ConvertEvent) error { events = append(events, ev); return nil })
		if required {
			assert.True(t, errdefs.IsInvalidArgument(err), "require_lossless in the config refuses it: %v", err)
			continue
		}
		require.NoError(t, err)
		result := events[len(events)-1].GetResult()
		require.Len(t, result.GetNotLossless(), 1)
		for _, text := range result.GetNotLossless() {
			assert.Contains(t, text, "sparse")
		}
		var noted bool
		for _, ev := range events {
			noted = noted || ev.GetLayer().GetNotLossless() != ""
		}
		assert.True(t, noted, "a layer event says it too")
	}
}
