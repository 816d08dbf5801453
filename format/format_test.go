package format_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/plugin"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/format"

	_ "github.com/lazyconv/lazyconv/converter/nydus"
	_ "github.com/lazyconv/lazyconv/converter/recompress"
	_ "github.com/lazyconv/lazyconv/converter/stargz"
)

// variant is the variant key of the estargz format as loaded with section.
func variant(t *testing.T, section format.Config, requested map[string]string) string {
	t.Helper()
	loaded, err := format.Load(context.Background(), map[string]format.Config{"estargz": section}, nil)
	require.NoError(t, err)
	for _, f := range loaded.Formats {
		if f.Name == "estargz" {
			opts, err := f.ResolveOptions(requested)
			require.NoError(t, err)
			p, err := f.Plan(opts, &api.ConvertRequest{})
			require.NoError(t, err)
			lc, err := p.Layers(ocispec.Descriptor{}, 0, ocispec.Descriptor{})
			require.NoError(t, err)
			return lc.Variant()
		}
	}
	t.Fatal("estargz did not load")
	return ""
}

// A value in a format's section reaches its conversions: the variant key
// changes with it, and a request still overrides it.
func TestSectionValuesReachConversions(t *testing.T) {
	base := variant(t, nil, nil)
	assert.Equal(t, "estargz.deflate-go.level-2", variant(t, format.Config{"compression_level": int64(2), "deflate": "go"}, nil))
	assert.Equal(t, "estargz.chunk-1024.deflate-go.level-2", variant(t, format.Config{"compression_level": int64(2), "deflate": "go"}, map[string]string{"chunk-size": "1024"}))
	assert.Equal(t, base, variant(t, format.Config{}, nil), "an empty section is the defaults")
}

func TestSectionsAreChecked(t *testing.T) {
	for _, tc := range []struct {
		name     string
		sections map[string]format.Config
		want     string
	}{
		{"unknown key", map[string]format.Config{"estargz": {"level": int64(6)}}, "unknown key \"level\" (known: chunk_size, compression_level, deflate)"},
		{"wrong kind", map[string]format.Config{"zstdchunked": {"compression_level": "high"}}, "compression_level takes a int"},
		{"invalid value", map[string]format.Config{"io.containerd.image-converter.v1.zstdchunked": {"compression_level": int64(30)}}, "out of range"},
		{"no such format", map[string]format.Config{"io.containerd.image-converter.v1.tarball": {}}, "no such format plugin"},
		{"a format without options", map[string]format.Config{"gzip": {"level": int64(1)}}, "unknown key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := format.Load(context.Background(), tc.sections, nil)
			require.Error(t, err)
			assert.True(t, errdefs.IsInvalidArgument(err), "%v", err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

// disabled_plugins removes formats by name or URI; a format that cannot
// run here is skipped with the reason, and keeps what it was configured with.
func TestDisabledAndSkipped(t *testing.T) {
	builder := filepath.Join(t.TempDir(), "nydus-image")
	loaded, err := format.Load(context.Background(), map[string]format.Config{"nydus": {"builder_path": builder}},
		[]string{"gzip", "io.containerd.image-converter.v1.zstd"})
	require.NoError(t, err)
	assert.Equal(t, []string{"gzip", "zstd"}, loaded.Disabled)
	var names []string
	for _, f := range loaded.Formats {
		names = append(names, f.Name)
	}
	assert.Equal(t, []string{"estargz", "estargz-optimized", "zstdchunked", "uncompress"}, names, "in table order")
	require.Contains(t, loaded.Skipped, "nydus")
	assert.True(t, plugin.IsSkipPlugin(loaded.Skipped["nydus"]))
	assert.Contains(t, loaded.Skipped["nydus"].Error(), "nydus-image")
	require.Len(t, loaded.Unavailable, 1)
	assert.Equal(t, builder, loaded.Unavailable[0].Configured()["builder-path"])
}
