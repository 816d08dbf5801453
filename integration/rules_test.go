package integration

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/internal/imagegen"
	"github.com/lazyconv/lazyconv/labels"
)

// A rule in containerd-lazyconv's config converts matching images as they
// arrive (import, tag) with no further command; a failure is labelled on the
// source image.
func TestRulesConvertImagesAsTheyArrive(t *testing.T) {
	requireRoot(t)
	d := startDaemon(t, bins.containerdLazyconv, testConfig+`
[[plugins.'io.containerd.grpc.v1.lazyconv'.rules]]
  match = "example.com/rules/*"
  format = "estargz"
  tag_suffix = "-esgz"
`)
	c := d.client(t)
	ctx := nsContext("default")
	waitImage := func(name string) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			if _, err := c.ImageService().Get(ctx, name); err == nil {
				return
			}
			require.True(t, time.Now().Before(deadline), "%s never appeared:\n%s", name, d.logText())
			time.Sleep(100 * time.Millisecond)
		}
	}
	img := newTestImage(t, "example.com/rules/app:v1", 0)
	mustLazyconv(t, "--address", d.address, "image", "import", img.archive)
	waitImage("example.com/rules/app:v1-esgz")
	out := mustLazyconv(t, "--address", d.address, "image", "verify", "example.com/rules/app:v1-esgz")
	assert.Contains(t, out, "3 lazy-pull layers verified")

	// Tagged with upstream's ctr: converted too.
	out2, err := runCtr(t, d.address, "images", "tag", "example.com/rules/app:v1", "example.com/rules/app:v2")
	require.NoError(t, err, out2)
	waitImage("example.com/rules/app:v2-esgz")

	// A hostile image: refused, the reason labelled on the source.
	bad := filepath.Join(t.TempDir(), "bad.tar")
	require.NoError(t, imagegen.WriteOCIArchiveFile(bad, convertertest.HostileImages(1 << 20)[0].Image.WithName("example.com/rules/bad:v1")))
	mustLazyconv(t, "--address", d.address, "image", "import", bad)
	deadline := time.Now().Add(60 * time.Second)
	for {
		src, err := c.ImageService().Get(ctx, "example.com/rules/bad:v1")
		require.NoError(t, err)
		if reason := src.Labels[labels.RuleFailed]; reason != "" {
			assert.Contains(t, reason, "climbs out")
			break
		}
		require.True(t, time.Now().Before(deadline), "no failure label:\n%s", d.logText())
		time.Sleep(100 * time.Millisecond)
	}
	assert.Contains(t, d.logText(), "lazyconv: rule conversion failed")
	_, err = c.ImageService().Get(ctx, "example.com/rules/bad:v1-esgz")
	assert.Error(t, err)
}

// lazyconvd applies the same rules next to a stock containerd, through
// containerd's events API.
func TestSidecarRules(t *testing.T) {
	requireRoot(t)
	stock := startDaemon(t, bins.stockContainerd, stockConfig)
	startSidecarWith(t, stock.address, `
[converter]
  [[converter.rules]]
    match = "example.com/sidecar-rules/*"
    format = "zstdchunked"
    tag_suffix = "-zc"
`)
	img := newTestImage(t, "example.com/sidecar-rules/app:v1", 0)
	c := stock.client(t)
	ctx := nsContext("default")
	// The sidecar's event stream opens asynchronously: import again (an
	// update event) until the conversion shows, for at most a minute.
	deadline := time.Now().Add(60 * time.Second)
	for {
		mustLazyconv(t, "--address", stock.address, "image", "import", img.archive)
		for wait := time.Now().Add(5 * time.Second); time.Now().Before(wait); time.Sleep(100 * time.Millisecond) {
			if _, err := c.ImageService().Get(ctx, "example.com/sidecar-rules/app:v1-zc"); err == nil {
				return
			}
		}
		require.True(t, time.Now().Before(deadline), "the sidecar's rule did not convert the import")
	}
}
