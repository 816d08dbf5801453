package integration

import (
	"encoding/json"
	"strings"
	"testing"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/internal/imagegen"
)

// daemonState is everything a refused conversion must leave as it was, in
// the daemon's default namespace.
func daemonState(t *testing.T, c *containerd.Client) []string {
	return convertertest.StoreState(t, nsContext("default"), c.ContentStore(), c.ImageService(), c.LeasesService())
}

// Every class of the hostile corpus, written into a real containerd-lazyconv
// and converted by the plugin through the CLI, is refused with its class's
// message, and after containerd's GC the store is exactly as before. The
// limit cases run against a daemon configured with those limits.
func TestHostileImagesInTheDaemon(t *testing.T) {
	requireRoot(t)
	d := startDaemon(t, bins.containerdLazyconv, testConfig+`
[plugins.'io.containerd.grpc.v1.lazyconv']
  max_entries = 100
  max_expanded_bytes = 4194304
  max_toc_bytes = 4194304
`)
	c := d.client(t)
	ctx := nsContext("default")
	for _, h := range convertertest.HostileImages(8 << 20) {
		t.Run(h.Name, func(t *testing.T) {
			mdesc, err := imagegen.Store(ctx, c.ContentStore(), c.ImageService(), h.Image)
			require.NoError(t, err)
			if h.DeleteLayer >= 0 {
				blob, err := content.ReadBlob(ctx, c.ContentStore(), mdesc)
				require.NoError(t, err)
				var m ocispec.Manifest
				require.NoError(t, json.Unmarshal(blob, &m))
				require.NoError(t, c.ContentStore().Delete(ctx, m.Layers[h.DeleteLayer].Digest))
			}
			collect(t, ctx, c)
			before := daemonState(t, c)
			out, err := lazyconv(t, "--address", d.address, "image", "convert", "--estargz", "--oci", h.Image.Name, h.Image.Name+"-esgz")
			require.Error(t, err, "converted a hostile image:\n%s", out)
			t.Log(strings.TrimSpace(out[strings.LastIndex(out, "lazyconv:"):]))
			collect(t, ctx, c)
			assert.Equal(t, before, daemonState(t, c), "after GC the store is as it was")
			_, err = c.ImageService().Get(ctx, h.Image.Name+"-esgz")
			assert.Error(t, err)
			require.NoError(t, c.ImageService().Delete(ctx, h.Image.Name, images.SynchronousDelete()))
		})
	}
}
