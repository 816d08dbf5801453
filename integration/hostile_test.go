package integration

import (
	"encoding/json"
	"sort"
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

// daemonState is everything a refused conversion must leave as it was:
// blobs with their labels, ingests, images, leases.
func daemonState(t *testing.T, c *containerd.Client) []string {
	t.Helper()
	ctx := nsContext("default")
	var out []string
	require.NoError(t, c.ContentStore().Walk(ctx, func(info content.Info) error {
		var lbls []string
		for k, v := range info.Labels {
			lbls = append(lbls, k+"="+v)
		}
		sort.Strings(lbls)
		out = append(out, "blob "+info.Digest.String()+" "+strings.Join(lbls, " "))
		return nil
	}))
	sts, err := c.ContentStore().ListStatuses(ctx)
	require.NoError(t, err)
	for _, st := range sts {
		out = append(out, "ingest "+st.Ref)
	}
	imgs, err := c.ImageService().List(ctx)
	require.NoError(t, err)
	for _, img := range imgs {
		out = append(out, "image "+img.Name+" "+img.Target.Digest.String())
	}
	ls, err := c.LeasesService().List(ctx)
	require.NoError(t, err)
	for _, l := range ls {
		out = append(out, "lease "+l.ID)
	}
	sort.Strings(out)
	return out
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
