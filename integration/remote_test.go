package integration

import (
	"io"
	stdlog "log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/labels"
)

// logSince returns what the registry logged after offset, and the new offset.
func (r *registry) logSince(t *testing.T, offset int) (string, int) {
	t.Helper()
	b, err := os.ReadFile(r.logPath)
	require.NoError(t, err)
	return string(b[offset:]), len(b)
}

// blobGETs counts the registry's GETs of a blob in a log.
func blobGETs(log, repo string, d string) int {
	return len(regexp.MustCompile(`"GET /v2/`+regexp.QuoteMeta(repo)+`/blobs/`+regexp.QuoteMeta(d)+` `).FindAllString(log, -1))
}

// pushSource imports the test image into a daemon and pushes it as ref, then
// removes it locally.
func pushSource(t *testing.T, d *daemon, ref string) testImage {
	t.Helper()
	img := newTestImage(t, ref, 0)
	mustLazyconv(t, "--address", d.address, "image", "import", img.archive)
	mustLazyconv(t, "--address", d.address, "image", "push", "--plain-http", ref)
	mustLazyconv(t, "--address", d.address, "image", "rm", ref)
	return img
}

func sourceLayers(t *testing.T, d *daemon, ref string) []ocispec.Descriptor {
	t.Helper()
	c := d.client(t)
	ctx := nsContext("default")
	img, err := c.ImageService().Get(ctx, ref)
	require.NoError(t, err)
	m, err := images.Manifest(ctx, c.ContentStore(), img.Target, platforms.All)
	require.NoError(t, err)
	return m.Layers
}

func TestLazyPullConvertFetchesEachLayerOnceAndPushMounts(t *testing.T) {
	requireRoot(t)
	reg := startRegistry(t)
	d := startDaemon(t, bins.containerdLazyconv, testConfig)
	src := reg.host + "/lazy/app:v1"
	img := pushSource(t, d, src)
	_, offset := reg.logSince(t, 0)

	mustLazyconv(t, "--address", d.address, "image", "pull", "--lazy", "--plain-http", src)
	layers := sourceLayers(t, d, src)
	c := d.client(t)
	ctx := nsContext("default")
	log, offset := reg.logSince(t, offset)
	for _, l := range layers {
		assert.Zero(t, blobGETs(log, "lazy/app", l.Digest.String()), "a lazy pull fetches no layer")
		_, err := c.ContentStore().Info(ctx, l.Digest)
		assert.True(t, errdefs.IsNotFound(err), "layer %s is not local after a lazy pull", l.Digest)
	}

	// Two conversions at once, without pulling first: each layer is fetched once.
	var wg sync.WaitGroup
	outs := make([]string, 2)
	errs := make([]error, 2)
	for i, format := range []string{"--estargz", "--zstdchunked"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], errs[i] = lazyconv(t, "--address", d.address, "image", "convert", format, "--oci", "--plain-http", src, src+strings.TrimPrefix(format, "--"))
		}()
	}
	wg.Wait()
	for i := range outs {
		require.NoError(t, errs[i], outs[i])
	}
	log, offset = reg.logSince(t, offset)
	for _, l := range layers {
		assert.Equal(t, 1, blobGETs(log, "lazy/app", l.Digest.String()), "layer %s fetched exactly once", l.Digest)

		info, err := c.ContentStore().Info(ctx, l.Digest)
		require.NoError(t, err)
		host, _, _ := net.SplitHostPort(reg.host) // containerd keys sources by host name, without the port
		assert.Equal(t, "lazy/app", info.Labels[labels.DistributionSourcePrefix+host])
	}
	assertConvertedImage(t, ctx, c.ContentStore(), c.ImageService(), src+"estargz", img)

	// Pushing the source to another repository mounts every layer from where it came.
	mustLazyconv(t, "--address", d.address, "image", "push", "--plain-http", reg.host+"/other/app:v1", src)
	log, offset = reg.logSince(t, offset)
	for _, l := range layers {
		assert.True(t, strings.Contains(log, "mount="+l.Digest.String()+"&from=lazy/app"), "layer %s is mounted, not uploaded", l.Digest)
	}
	// A converted image's new blobs never claim the source's repository.
	mustLazyconv(t, "--address", d.address, "image", "push", "--plain-http", reg.host+"/other/app:esgz", src+"estargz")
	log, _ = reg.logSince(t, offset)
	for _, l := range sourceLayers(t, d, src+"estargz") {
		assert.False(t, strings.Contains(log, "mount="+l.Digest.String()), "converted layer %s is uploaded, not mounted", l.Digest)
	}

	// --force-compression pushes every layer in the format, converting on the way.
	forced := reg.host + "/forced/app:v1"
	mustLazyconv(t, "--address", d.address, "image", "push", "--plain-http", "--force-compression", "zstdchunked", forced, src)
	mustLazyconv(t, "--address", d.address, "-n", "forced", "image", "pull", "--plain-http", forced)
	fctx := nsContext("forced")
	fimg, err := c.ImageService().Get(fctx, forced)
	require.NoError(t, err)
	m, err := images.Manifest(fctx, c.ContentStore(), fimg.Target, platforms.All)
	require.NoError(t, err)
	for _, l := range m.Layers {
		assert.Equal(t, ocispec.MediaTypeImageLayerZstd, l.MediaType)
		assert.NotEmpty(t, l.Annotations["io.containers.zstd-chunked.manifest-checksum"])
	}
	out := mustLazyconv(t, "--address", d.address, "-n", "forced", "image", "verify", forced)
	assert.Contains(t, out, "3 lazy-pull layers verified")
}

// flakyProxy forwards to a registry but, while failing is set, cuts every
// GET of a blob in half (resumed range requests included).
func flakyProxy(t *testing.T, registryHost string, failing *atomic.Bool) string {
	t.Helper()
	target, err := url.Parse("http://" + registryHost)
	require.NoError(t, err)
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ErrorLog = stdlog.New(io.Discard, "", 0)
	proxy.ModifyResponse = func(resp *http.Response) error {
		if failing.Load() && resp.Request.Method == http.MethodGet && strings.Contains(resp.Request.URL.Path, "/blobs/") {
			resp.Body = &cutBody{r: resp.Body, left: resp.ContentLength / 2}
		}
		return nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: proxy}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

type cutBody struct {
	r    io.ReadCloser
	left int64
}

func (c *cutBody) Read(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, io.ErrUnexpectedEOF
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	return n, err
}

func (c *cutBody) Close() error { return c.r.Close() }

func TestRegistryFailingMidBlobLeavesNothingAndRetrySucceeds(t *testing.T) {
	requireRoot(t)
	reg := startRegistry(t)
	d := startDaemon(t, bins.containerdLazyconv, testConfig)
	pushSource(t, d, reg.host+"/lazy/app:v1")
	var failing atomic.Bool
	proxy := flakyProxy(t, reg.host, &failing)
	src := proxy + "/lazy/app:v1"
	mustLazyconv(t, "--address", d.address, "image", "pull", "--lazy", "--plain-http", src)
	layers := sourceLayers(t, d, src)
	failing.Store(true)

	out, err := lazyconv(t, "--address", d.address, "image", "convert", "--estargz", "--oci", "--plain-http", src, src+"esgz")
	require.Error(t, err, out)
	assert.Contains(t, out, "fetching")
	assert.Contains(t, out, "retry")
	c := d.client(t)
	ctx := nsContext("default")
	collect(t, ctx, c)
	for _, l := range layers {
		_, err := c.ContentStore().Info(ctx, l.Digest)
		assert.True(t, errdefs.IsNotFound(err), "nothing of %s was committed", l.Digest)
	}
	statuses, err := c.ContentStore().ListStatuses(ctx)
	require.NoError(t, err)
	assert.Empty(t, statuses, "no partial ingest remains")
	_, err = c.ImageService().Get(ctx, src+"esgz")
	assert.True(t, errdefs.IsNotFound(err))

	failing.Store(false)
	out = mustLazyconv(t, "--address", d.address, "image", "convert", "--estargz", "--oci", "--plain-http", src, src+"esgz")
	assert.Contains(t, out, "committed")
}
