package integration

import (
	"bytes"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// An image imported with ctr (which unpacks it) whose layer blobs are then
// pruned, as CRI's discard_unpacked_layers leaves images, converts in the
// daemon from its snapshots: every layer is rebuilt with containerd's
// differ, reported as such, and every file of the result equals the source's.
func TestConvertLayersRebuiltFromSnapshots(t *testing.T) {
	requireRoot(t)
	d := startDaemon(t, bins.containerdLazyconv, testConfig)
	img := newTestImage(t, "example.local/heldout:v1", 0)
	ctr := func(args ...string) (string, error) {
		out, err := exec.Command(bins.upstreamCtr, append([]string{"--address", d.address, "-n", "default"}, args...)...).CombinedOutput()
		return string(out), err
	}
	out, err := ctr("images", "import", "--local", "--snapshotter", "native", img.archive)
	if err != nil && strings.Contains(out, "mount") {
		t.Skipf("this machine cannot mount the native snapshotter's bind mounts: %s", out)
	}
	require.NoError(t, err, out)

	c := d.client(t)
	ctx := nsContext("default")
	src, err := c.ImageService().Get(ctx, "example.local/heldout:v1")
	require.NoError(t, err)
	m, err := images.Manifest(ctx, c.ContentStore(), src.Target, platforms.All)
	require.NoError(t, err)
	out, err = ctr("content", "prune", "references")
	require.NoError(t, err, out)
	// containerd collects the layers in the background.
	deadline := time.Now().Add(30 * time.Second)
	for _, l := range m.Layers {
		for {
			if _, err := c.ContentStore().Info(ctx, l.Digest); errdefs.IsNotFound(err) {
				break
			}
			require.True(t, time.Now().Before(deadline), "layer %s was not collected after the prune", l.Digest)
			time.Sleep(100 * time.Millisecond)
		}
	}

	out = mustLazyconv(t, "--address", d.address, "image", "convert", "--estargz", "--oci", "example.local/heldout:v1", "example.local/heldout:esgz")
	assert.Equal(t, len(m.Layers), strings.Count(out, "came from its snapshot"), out)
	out = mustLazyconv(t, "--address", d.address, "image", "verify", "example.local/heldout:esgz")
	assert.Contains(t, out, "3 lazy-pull layers verified")

	conv, err := c.ImageService().Get(ctx, "example.local/heldout:esgz")
	require.NoError(t, err)
	cm, err := images.Manifest(ctx, c.ContentStore(), conv.Target, platforms.All)
	require.NoError(t, err)
	require.Len(t, cm.Layers, len(img.tars))
	for i, l := range cm.Layers {
		blob, err := content.ReadBlob(ctx, c.ContentStore(), l)
		require.NoError(t, err)
		rc, err := estargz.Unpack(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))), new(estargz.GzipDecompressor))
		require.NoError(t, err)
		assert.Equal(t, convertertest.RegularFiles(t, bytes.NewReader(img.tars[i])), convertertest.RegularFiles(t, rc), "layer %d holds the source's files", i)
	}

	// With no blob, no snapshot and no reachable registry, the error says so.
	_, err = ctr("images", "rm", "--sync", "example.local/heldout:esgz")
	require.NoError(t, err)
	out, err = ctr("snapshots", "--snapshotter", "native", "ls")
	require.NoError(t, err, out)
	for _, line := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
		if f := strings.Fields(line); len(f) > 0 {
			_, _ = ctr("snapshots", "--snapshotter", "native", "rm", f[0])
		}
	}
	out, err = lazyconv(t, "--address", d.address, "image", "convert", "--estargz", "--oci", "example.local/heldout:v1", "example.local/heldout:esgz2")
	require.Error(t, err, out)
	assert.Contains(t, out, "content store: no such blob")
	assert.Contains(t, out, "snapshots:")
	assert.Contains(t, out, "registry:")
}
