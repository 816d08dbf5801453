package integration

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter/stargz"
	"github.com/lazyconv/lazyconv/labels"
)

func TestPluginIsListedAndExampleConfigLoadsCleanly(t *testing.T) {
	requireRoot(t)
	example, err := os.ReadFile("../config.toml.example")
	require.NoError(t, err)
	d := startDaemon(t, bins.containerdLazyconv, string(example))
	c := d.client(t)
	resp, err := c.IntrospectionService().Plugins(nsContext("default"), `type=="io.containerd.grpc.v1",id=="lazyconv"`)
	require.NoError(t, err)
	require.Len(t, resp.Plugins, 1)
	assert.Nil(t, resp.Plugins[0].InitErr, "the lazyconv plugin initialised")
	// One image-converter plugin per format, which the lazyconv plugin
	// requires: ok, or skipped with the reason (nydus without its builder).
	resp, err = c.IntrospectionService().Plugins(nsContext("default"), `type=="io.containerd.image-converter.v1"`)
	require.NoError(t, err)
	ids := map[string]string{}
	for _, p := range resp.Plugins {
		ids[p.ID] = "ok"
		if p.InitErr != nil {
			ids[p.ID] = p.InitErr.Message
		}
	}
	for _, name := range []string{"estargz", "estargz-optimized", "zstdchunked", "soci", "uncompress", "gzip", "zstd"} {
		assert.Equal(t, "ok", ids[name], name)
	}
	if _, err := exec.LookPath("nydus-image"); err != nil {
		assert.Contains(t, ids["nydus"], "nydus-image", "nydus is skipped, saying why")
		assert.Contains(t, ids["nydus"], "skip plugin")
	}
	assert.Len(t, ids, 8)
	out, err := exec.Command(bins.ctr, "--address", d.address, "plugins", "ls", "type==io.containerd.image-converter.v1").CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Equal(t, 8, strings.Count(string(out), "\nio.containerd.image-converter.v1 "), "one row per format:\n%s", out)
	for _, line := range strings.Split(d.logText(), "\n") {
		if strings.Contains(line, "level=warning") && (strings.Contains(line, "unknown key") ||
			strings.Contains(line, "migrated") || strings.Contains(line, "lazyconv")) {
			t.Errorf("config.toml.example gives a warning: %s", line)
		}
	}
	version := mustLazyconv(t, "--address", d.address, "version")
	assert.Contains(t, version, "default format estargz")
	assert.Contains(t, version, "format estargz")
	// The daemon says which deflate its eStargz uses: the one this test binary
	// was built with (the daemons are built with the same tags).
	assert.Contains(t, version, "deflate "+stargz.DeflateDescription()+" (")
}

// The plugin's section of config.toml reaches the service; a typo stops it.
func TestPluginConfigReachesTheService(t *testing.T) {
	requireRoot(t)
	d := startDaemon(t, bins.containerdLazyconv, testConfig+`
[plugins.'io.containerd.grpc.v1.lazyconv']
  workers = 3
  default_format = "zstdchunked"
[plugins.'io.containerd.image-converter.v1.nydus']
  builder_path = "/nonexistent/nydus-image"
`)
	out := mustLazyconv(t, "--address", d.address, "version")
	assert.Contains(t, out, "default format zstdchunked, 3 workers")
	assert.Contains(t, out, "/nonexistent/nydus-image", "the configured builder is the one probed")

	bad := startDaemonExpectingFailure(t, bins.containerdLazyconv, testConfig+`
[plugins.'io.containerd.grpc.v1.lazyconv']
  estargz_level = 9
`)
	assert.Contains(t, bad, "estargz_level", "the unknown key is named")
	// A format option where it used to be names where it is now.
	bad = startDaemonExpectingFailure(t, bins.containerdLazyconv, testConfig+`
[plugins.'io.containerd.grpc.v1.lazyconv']
  zstdchunked_compression_level = 9
`)
	assert.Contains(t, bad, "compression_level in [plugins.'io.containerd.image-converter.v1.zstdchunked']")
}

func TestConvertInDaemonThroughRegistryRoundTrip(t *testing.T) {
	requireRoot(t)
	reg := startRegistry(t)
	d := startDaemon(t, bins.containerdLazyconv, testConfig)
	src := reg.host + "/lazyconv/app:v1"
	dst := reg.host + "/lazyconv/app:esgz"
	img := newTestImage(t, src, 0)
	lc := func(args ...string) string {
		return mustLazyconv(t, append([]string{"--address", d.address}, args...)...)
	}

	lc("image", "import", img.archive)
	lc("image", "push", "--plain-http", src)
	lc("image", "rm", src)
	lc("image", "pull", "--plain-http", src)

	out := lc("image", "convert", "--estargz", "--oci", src, dst)
	assert.Contains(t, out, "committed", out)
	assert.NotContains(t, out, "cached", out)
	assert.Contains(t, out, dst+" sha256:")

	lc("image", "push", "--plain-http", dst)
	lc("image", "rm", src, dst)
	c := d.client(t)
	ctx := nsContext("default")
	var left []string
	require.NoError(t, c.ContentStore().Walk(ctx, func(info contentInfo) error {
		left = append(left, info.Digest.String())
		return nil
	}))
	assert.Empty(t, left, "nothing is left once the images are removed")

	mustLazyconv(t, "--address", d.address, "-n", "other", "image", "pull", "--plain-http", dst)
	out = mustLazyconv(t, "--address", d.address, "-n", "other", "image", "verify", dst)
	assert.Contains(t, out, "3 lazy-pull layers verified")
	assertConvertedImage(t, nsContext("other"), c.ContentStore(), c.ImageService(), dst, img)
}

func TestZstdChunkedAndNydusInDaemon(t *testing.T) {
	requireRoot(t)
	d := startDaemon(t, bins.containerdLazyconv, testConfig)
	img := newTestImage(t, "example.com/app:v1", 0)
	mustLazyconv(t, "--address", d.address, "image", "import", img.archive)
	out := mustLazyconv(t, "--address", d.address, "image", "convert", "--zstdchunked", img.name, "example.com/app:zc")
	assert.Contains(t, out, "committed")
	out = mustLazyconv(t, "--address", d.address, "image", "verify", "example.com/app:zc")
	assert.Contains(t, out, "3 lazy-pull layers verified")

	// Without a builder in the daemon, nydus is refused at once, naming it.
	out = mustLazyconv(t, "--address", d.address, "version")
	assert.Contains(t, out, "format nydus")
	assert.Contains(t, out, "unavailable")
	out, err := lazyconv(t, "--address", d.address, "image", "convert", "--nydus", img.name, "example.com/app:nydus")
	require.Error(t, err)
	assert.Contains(t, out, "nydus-image")
	assert.NotContains(t, out, "converting")
}

// Each format is an image-converter plugin: a value in its section reaches
// its conversions (the variant key names it), and disabled_plugins removes
// a format from `lazyconv version`, the API, the CLI and `ctr images
// convert`, which refuse it saying so.
func TestFormatPluginsAreConfiguredAndDisabled(t *testing.T) {
	requireRoot(t)
	d := startDaemon(t, bins.containerdLazyconv, `version = 4
required_plugins = ["io.containerd.grpc.v1.lazyconv"]
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.image-converter.v1.zstdchunked"]
[plugins.'io.containerd.image-converter.v1.estargz']
  compression_level = 1
  deflate = "go"
`)
	lc := func(args ...string) (string, error) {
		return lazyconv(t, append([]string{"--address", d.address}, args...)...)
	}
	img := newTestImage(t, "example.com/plugins/app:v1", 0)
	_, err := lc("image", "import", img.archive)
	require.NoError(t, err)
	out, err := lc("image", "convert", "--estargz", "--oci", "example.com/plugins/app:v1", "example.com/plugins/app:esgz")
	require.NoError(t, err, out)
	ctx := nsContext("default")
	c := d.client(t)
	converted, err := c.ImageService().Get(ctx, "example.com/plugins/app:esgz")
	require.NoError(t, err)
	info, err := c.ContentStore().Info(ctx, converted.Target.Digest)
	require.NoError(t, err)
	assert.Equal(t, "estargz.deflate-go.level-1", info.Labels[labels.ConvertedVariant], "the section's level and deflate reach the conversion")

	version, err := lc("version")
	require.NoError(t, err)
	assert.Contains(t, version, "format estargz")
	assert.NotContains(t, version, "format zstdchunked")
	out, err = lc("image", "convert", "--zstdchunked", "example.com/plugins/app:v1", "example.com/plugins/app:zc")
	require.Error(t, err)
	assert.Contains(t, out, "format zstdchunked is disabled in this service's configuration (disabled_plugins lists io.containerd.image-converter.v1.zstdchunked)")
	out, err = runCtr(t, d.address, "images", "convert", "--zstdchunked", "example.com/plugins/app:v1", "example.com/plugins/app:zc2")
	require.Error(t, err)
	assert.Contains(t, out, "format zstdchunked is disabled")
	_, err = c.ImageService().Get(ctx, "example.com/plugins/app:zc")
	assert.True(t, errdefs.IsNotFound(err), "nothing was converted: %v", err)
}
