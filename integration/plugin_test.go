package integration

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter/stargz"
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
	// Nothing in containerd consumes per-format image-converter plugins, so lazyconv registers none.
	resp, err = c.IntrospectionService().Plugins(nsContext("default"), `type=="io.containerd.image-converter.v1"`)
	require.NoError(t, err)
	assert.Empty(t, resp.Plugins)
	for _, line := range strings.Split(d.logText(), "\n") {
		if strings.Contains(line, "level=warning") && (strings.Contains(line, "unknown key") ||
			strings.Contains(line, "migrated") || strings.Contains(line, "lazyconv")) {
			t.Errorf("config.toml.example gives a warning: %s", line)
		}
	}
	out := mustLazyconv(t, "--address", d.address, "version")
	assert.Contains(t, out, "default format estargz")
	assert.Contains(t, out, "format estargz")
	// The daemon says which deflate its eStargz uses: the one this test binary
	// was built with (the daemons are built with the same tags).
	assert.Contains(t, out, "deflate "+stargz.DeflateDescription()+" (")
}

// The plugin's section of config.toml reaches the service; a typo stops it.
func TestPluginConfigReachesTheService(t *testing.T) {
	requireRoot(t)
	d := startDaemon(t, bins.containerdLazyconv, testConfig+`
[plugins.'io.containerd.grpc.v1.lazyconv']
  workers = 3
  default_format = "zstdchunked"
  zstdchunked_compression_level = 9
  nydus_builder_path = "/nonexistent/nydus-image"
`)
	out := mustLazyconv(t, "--address", d.address, "version")
	assert.Contains(t, out, "default format zstdchunked, 3 workers")
	assert.Contains(t, out, "/nonexistent/nydus-image", "the configured builder is the one probed")

	bad := startDaemonExpectingFailure(t, bins.containerdLazyconv, testConfig+`
[plugins.'io.containerd.grpc.v1.lazyconv']
  estargz_level = 9
`)
	assert.Contains(t, bad, "estargz_level", "the unknown key is named")
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
