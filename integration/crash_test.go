package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/labels"
)

func converterClient(t *testing.T, c *containerd.Client) api.ConverterClient {
	t.Helper()
	conn, ok := c.Conn().(*grpc.ClientConn)
	require.True(t, ok)
	return api.NewConverterClient(conn)
}

func TestKilledMidConversionRecovers(t *testing.T) {
	requireRoot(t)
	cfg := testConfig + "\n[plugins.'io.containerd.grpc.v1.lazyconv']\n  workers = 1\n"
	d := startDaemon(t, bins.containerdLazyconv, cfg)
	img := newTestImage(t, "example.com/big:v1", 12<<20)
	mustLazyconv(t, "--address", d.address, "image", "import", img.archive)
	ctx := nsContext("default")
	req := &api.ConvertRequest{Source: img.name, Target: "example.com/big:esgz", Format: "estargz", Oci: true}

	// Convert, and kill -9 the daemon once one layer is committed and the next is being written.
	c := d.client(t)
	stream, err := converterClient(t, c).Convert(ctx, req)
	require.NoError(t, err)
	states := map[string]*api.LayerProgress{}
	killed := false
	for !killed {
		ev, err := stream.Recv()
		require.NoError(t, err, "the conversion ended before it could be interrupted")
		committed, writing := 0, 0
		if l := ev.GetLayer(); l != nil {
			states[l.GetDigest()] = l
		}
		for _, l := range states {
			if l.GetState() == api.LayerState_LAYER_STATE_COMMITTED {
				committed++
			}
			if l.GetState() == api.LayerState_LAYER_STATE_CONVERTING && l.GetBytesOut() > 0 {
				writing++
			}
		}
		if committed >= 1 && writing >= 1 {
			d.kill()
			killed = true
		}
	}
	c.Close()

	d.start()
	c = d.client(t)
	ls, err := c.LeasesService().List(ctx)
	require.NoError(t, err)
	for _, l := range ls {
		assert.NotContains(t, l.Labels, labels.LeaseConverting, "the interrupted conversion's leases are dropped at start")
	}

	// The retry succeeds and the result is whole.
	stream, err = converterClient(t, c).Convert(ctx, req)
	require.NoError(t, err)
	result, err := api.ReceiveConvert(stream, nil)
	require.NoError(t, err)
	require.NotNil(t, result)
	assertConvertedImage(t, ctx, c.ContentStore(), c.ImageService(), "example.com/big:esgz", img)

	// After a collection, nothing half-written or unreferenced survives.
	assertNothingLeftOver(t, ctx, c)
}

// convertNow runs a conversion to its end and returns its target image.
func convertNow(t *testing.T, ctx context.Context, c *containerd.Client, req *api.ConvertRequest) images.Image {
	t.Helper()
	stream, err := converterClient(t, c).Convert(ctx, req)
	require.NoError(t, err)
	_, err = api.ReceiveConvert(stream, nil)
	require.NoError(t, err)
	img, err := c.ImageService().Get(ctx, req.Target)
	require.NoError(t, err)
	return img
}

// assertNothingLeftOver collects garbage and checks that no ingest and no
// unreachable blob survive.
func assertNothingLeftOver(t *testing.T, ctx context.Context, c *containerd.Client) {
	t.Helper()
	collect(t, ctx, c)
	statuses, err := c.ContentStore().ListStatuses(ctx)
	require.NoError(t, err)
	assert.Empty(t, statuses, "no ingest survives")
	reachable := reachableContent(t, ctx, c)
	require.NoError(t, c.ContentStore().Walk(ctx, func(info content.Info) error {
		assert.Contains(t, reachable, info.Digest, "%s is orphaned", info.Digest)
		return nil
	}))
}

// collect runs containerd's garbage collector now: deleting a lease with
// SynchronousDelete waits for a collection.
func collect(t *testing.T, ctx context.Context, c *containerd.Client) {
	t.Helper()
	l, err := c.LeasesService().Create(ctx, leases.WithRandomID())
	require.NoError(t, err)
	require.NoError(t, c.LeasesService().Delete(ctx, l, leases.SynchronousDelete))
}

// reachableContent walks every image, and every content GC reference label,
// from the image roots.
func reachableContent(t *testing.T, ctx context.Context, c *containerd.Client) map[digest.Digest]bool {
	t.Helper()
	cs := c.ContentStore()
	seen := map[digest.Digest]bool{}
	var visit func(d digest.Digest) error
	visit = func(d digest.Digest) error {
		if seen[d] {
			return nil
		}
		seen[d] = true
		info, err := cs.Info(ctx, d)
		if err != nil {
			return fmt.Errorf("%s is referenced but missing: %w", d, err)
		}
		for k, v := range info.Labels {
			if strings.HasPrefix(k, "containerd.io/gc.ref.content") {
				if err := visit(digest.Digest(v)); err != nil {
					return err
				}
			}
		}
		return nil
	}
	imgs, err := c.ImageService().List(ctx)
	require.NoError(t, err)
	for _, img := range imgs {
		require.NoError(t, images.Walk(ctx, images.HandlerFunc(func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
			if err := visit(desc.Digest); err != nil {
				return nil, err
			}
			return images.Children(ctx, cs, desc)
		}), img.Target))
	}
	return seen
}

// A SOCI conversion killed (SIGKILL) at any moment leaves nothing half-made:
// after the restarts the retry gives the image an uninterrupted conversion
// gives, it verifies, and a collection leaves nothing orphaned.
func TestKilledMidSOCIConversionRecovers(t *testing.T) {
	requireRoot(t)
	d := startDaemon(t, bins.containerdLazyconv, testConfig)
	img := newTestImage(t, "example.com/socibig:v1", 48<<20)
	mustLazyconv(t, "--address", d.address, "image", "import", img.archive)
	ctx := nsContext("default")
	req := &api.ConvertRequest{Source: img.name, Target: "example.com/socibig:soci", Format: "soci", Oci: true,
		Options: map[string]string{"min-layer-size": "0", "span-size": "65536"}}

	// Killed at three moments of the conversion (while its zTOCs are built,
	// stored, linked or bound), restarting each time.
	var c *containerd.Client
	for _, after := range []time.Duration{30 * time.Millisecond, 120 * time.Millisecond, 400 * time.Millisecond} {
		c = d.client(t)
		stream, err := converterClient(t, c).Convert(ctx, req)
		require.NoError(t, err)
		_, err = stream.Recv() // the conversion has started
		require.NoError(t, err)
		time.Sleep(after)
		d.kill()
		c.Close()
		d.start()
	}
	c = d.client(t)
	got := convertNow(t, ctx, c, req)

	// The same as a conversion nothing interrupted, on a fresh daemon.
	fresh := startDaemon(t, bins.containerdLazyconv, testConfig)
	mustLazyconv(t, "--address", fresh.address, "image", "import", img.archive)
	want := convertNow(t, ctx, fresh.client(t), req)
	assert.Equal(t, want.Target.Digest, got.Target.Digest, "the retry gives the uninterrupted conversion's image")
	verified := mustLazyconv(t, "--address", d.address, "image", "verify", req.Target)
	assert.Contains(t, verified, "lazy-pull layers verified")

	assertNothingLeftOver(t, ctx, c)
}
