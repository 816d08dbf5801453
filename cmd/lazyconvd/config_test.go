package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/format"
)

// exampleSidecarConfig extracts the commented lazyconvd section of
// config.toml.example, uncommented.
func exampleSidecarConfig(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../config.toml.example")
	require.NoError(t, err)
	_, section, ok := strings.Cut(string(b), "# --- lazyconvd.toml ---\n")
	require.True(t, ok, "config.toml.example has a lazyconvd section")
	var out []string
	for _, line := range strings.Split(section, "\n") {
		if rest, ok := strings.CutPrefix(line, "# "); ok && (strings.Contains(rest, "=") || strings.HasPrefix(rest, "[") || strings.HasPrefix(rest, "#")) {
			out = append(out, rest)
		}
	}
	return strings.Join(out, "\n")
}

func TestConfigExampleIsTheDefaults(t *testing.T) {
	p := filepath.Join(t.TempDir(), "lazyconvd.toml")
	require.NoError(t, os.WriteFile(p, []byte(exampleSidecarConfig(t)), 0o644))
	cfg, err := loadConfig(p)
	require.NoError(t, err)
	// The format sections are the formats' defaults.
	got, err := cfg.formats(context.Background())
	require.NoError(t, err)
	want, err := format.Load(context.Background(), nil, nil)
	require.NoError(t, err)
	require.Equal(t, len(want.Formats), len(got.Formats))
	for i := range want.Formats {
		assert.Equal(t, want.Formats[i].Configured(), got.Formats[i].Configured(), want.Formats[i].Name)
	}
	assert.Equal(t, want.Disabled, got.Disabled)
	cfg.Plugins, cfg.DisabledPlugins = nil, nil
	assert.Equal(t, defaultConfig(), cfg)
}

func TestConfigLoading(t *testing.T) {
	for _, tc := range []struct {
		name    string
		content string
		check   func(t *testing.T, cfg config, err error)
	}{
		{"missing file means defaults", "", func(t *testing.T, cfg config, err error) {
			require.NoError(t, err)
			assert.Equal(t, defaultConfig(), cfg)
		}},
		{"values override defaults", "address = \"/tmp/x.sock\"\n[converter]\nworkers = 3\n", func(t *testing.T, cfg config, err error) {
			require.NoError(t, err)
			assert.Equal(t, "/tmp/x.sock", cfg.Address)
			assert.Equal(t, 3, cfg.Converter.Workers)
			assert.Equal(t, defaultConfig().ContainerdAddress, cfg.ContainerdAddress)
		}},
		{"a format's section reaches it, disabled_plugins removes one",
			"disabled_plugins = [\"io.containerd.image-converter.v1.nydus\", \"gzip\"]\n[plugins.'io.containerd.image-converter.v1.estargz']\ncompression_level = 7\n",
			func(t *testing.T, cfg config, err error) {
				require.NoError(t, err)
				loaded, err := cfg.formats(context.Background())
				require.NoError(t, err)
				assert.Equal(t, []string{"nydus", "gzip"}, loaded.Disabled)
				var names []string
				for _, f := range loaded.Formats {
					names = append(names, f.Name)
					if f.Name == "estargz" {
						assert.Equal(t, "7", f.Configured()["compression-level"])
					}
				}
				assert.NotContains(t, names, "nydus")
				assert.NotContains(t, names, "gzip")
				assert.Contains(t, names, "estargz")
			}},
		{"a format key in [converter] names its new place", "[converter]\nestargz_compression_level = 6\n", func(t *testing.T, _ config, err error) {
			require.Error(t, err)
			assert.True(t, errdefs.IsInvalidArgument(err))
			assert.Contains(t, err.Error(), "compression_level in [plugins.'io.containerd.image-converter.v1.estargz']")
		}},
		{"only format plugins", "[plugins.'io.containerd.grpc.v1.cri']\nx = 1\n", func(t *testing.T, _ config, err error) {
			require.Error(t, err)
			assert.True(t, errdefs.IsInvalidArgument(err))
		}},
		{"unknown converter key is an error", "[converter]\nestargz_level = 6\n", func(t *testing.T, _ config, err error) {
			require.Error(t, err)
			assert.True(t, errdefs.IsInvalidArgument(err))
		}},
		{"unknown key is an error", "adress = \"/tmp/typo.sock\"\n", func(t *testing.T, _ config, err error) {
			require.Error(t, err)
			assert.True(t, errdefs.IsInvalidArgument(err))
		}},
		{"socket and namespaces", "socket_mode = \"0600\"\nsocket_group = \"42\"\nallowed_namespaces = [\"default\", \"builds\"]\n", func(t *testing.T, cfg config, err error) {
			require.NoError(t, err)
			assert.Equal(t, os.FileMode(0o600), cfg.SocketMode)
			assert.Equal(t, []string{"default", "builds"}, cfg.AllowedNamespaces)
			gid, err := cfg.socketGID()
			require.NoError(t, err)
			assert.Equal(t, 42, gid)
		}},
		{"no allowed namespaces means all", "allowed_namespaces = []\n", func(t *testing.T, cfg config, err error) {
			require.NoError(t, err)
			assert.Nil(t, cfg.AllowedNamespaces)
			gid, err := cfg.socketGID()
			require.NoError(t, err)
			assert.Equal(t, -1, gid, "no socket_group keeps lazyconvd's")
		}},
		{"a socket mode that is no permission bits is an error", "socket_mode = \"1777\"\n", func(t *testing.T, _ config, err error) {
			require.Error(t, err)
			assert.True(t, errdefs.IsInvalidArgument(err))
		}},
		{"a socket mode that is not octal is an error", "socket_mode = \"rw-rw----\"\n", func(t *testing.T, _ config, err error) {
			require.Error(t, err)
			assert.True(t, errdefs.IsInvalidArgument(err))
		}},
		{"a namespace that is no containerd identifier is an error", "allowed_namespaces = [\"../k8s.io\"]\n", func(t *testing.T, _ config, err error) {
			require.Error(t, err)
			assert.True(t, errdefs.IsInvalidArgument(err))
		}},
		{"an unknown socket group is an error", "socket_group = \"no-such-group-here\"\n", func(t *testing.T, cfg config, err error) {
			require.NoError(t, err, "groups are looked up when the socket is made")
			_, err = cfg.socketGID()
			require.Error(t, err)
			assert.True(t, errdefs.IsInvalidArgument(err))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "lazyconvd.toml")
			if tc.content != "" {
				require.NoError(t, os.WriteFile(p, []byte(tc.content), 0o644))
			}
			cfg, err := loadConfig(p)
			tc.check(t, cfg, err)
		})
	}
}
