package integration

import (
	"archive/tar"
	"context"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/internal/imagegen"
	"github.com/lazyconv/lazyconv/labels"
)

// stormImages are n small images, each of its own content, named
// prefix%03d:v1, in one OCI archive.
func stormImages(t *testing.T, prefix string, from, n int) string {
	t.Helper()
	var imgs []imagegen.Image
	for i := from; i < from+n; i++ {
		layer := imagegen.TarBytes([]imagegen.Entry{{Header: tar.Header{Name: "id", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: epoch},
			Body: []byte(fmt.Sprintf("image %d\n", i))}})
		imgs = append(imgs, imagegen.Image{Name: fmt.Sprintf("%s%03d:v1", prefix, i),
			Layers: []imagegen.Layer{{MediaType: ocispec.MediaTypeImageLayerGzip, Blob: imagegen.Compress(layer, "gzip")}}})
	}
	path := filepath.Join(t.TempDir(), "storm.tar")
	require.NoError(t, imagegen.WriteOCIArchiveFiles(path, imgs...))
	return path
}

// currentOutputs counts the sources named prefix* whose rule output (suffix)
// was converted from the digest they point at now.
func currentOutputs(t *testing.T, ctx context.Context, c *containerd.Client, prefix, suffix string) (current, sources int) {
	t.Helper()
	imgs, err := c.ImageService().List(ctx)
	require.NoError(t, err)
	byName := map[string]images.Image{}
	for _, img := range imgs {
		byName[img.Name] = img
	}
	for _, img := range imgs {
		if !strings.HasPrefix(img.Name, prefix) || strings.HasSuffix(img.Name, suffix) {
			continue
		}
		sources++
		if out, ok := byName[img.Name+suffix]; ok && out.Labels[labels.ConvertedFromDigest] == img.Target.Digest.String() {
			current++
		}
	}
	return current, sources
}

// noConversionLeases asserts that no conversion's lease is left.
func noConversionLeases(t *testing.T, ctx context.Context, c *containerd.Client) {
	t.Helper()
	ls, err := c.LeasesService().List(ctx)
	require.NoError(t, err)
	for _, l := range ls {
		assert.NotContains(t, l.Labels, labels.LeaseConverting, "lease %s outlives its conversion", l.ID)
	}
}

// One `ctr images import` of many images with a rule matching them all,
// through a queue far smaller than the import: every image is converted
// exactly once (the queue drops what it cannot hold, counted, and reconcile
// queues it again). Then another storm, with the daemon killed in the middle
// of it: once it is started again every image is converted (reconcile at
// start), and after a collection nothing half-made is left.
func TestRuleStormLosesNothingAndSurvivesAKill(t *testing.T) {
	requireRoot(t)
	const n = 150 // per storm; `make bench` imports 1,000
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	metricsAddr := l.Addr().String()
	l.Close()
	d := startDaemon(t, bins.containerdLazyconv, testConfig+fmt.Sprintf(`
[plugins.'io.containerd.server.v1.metrics']
  address = %q
[plugins.'io.containerd.grpc.v1.lazyconv']
  rule_queue_length = 10
  reconcile_interval = "1h"
[[plugins.'io.containerd.grpc.v1.lazyconv'.rules]]
  match = "example.com/storm/*"
  format = "estargz"
  tag_suffix = "-esgz"
`, metricsAddr))
	metrics := "http://" + metricsAddr + "/v1/metrics"
	c := d.client(t)
	ctx := nsContext("default")
	waitAll := func(c *containerd.Client, want int, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			cur, srcs := currentOutputs(t, ctx, c, "example.com/storm/", "-esgz")
			if cur == want && srcs == want {
				return
			}
			require.True(t, time.Now().Before(deadline), "%d of %d sources converted:\n%s", cur, srcs, tail(d.logText(), 4000))
			time.Sleep(200 * time.Millisecond)
		}
	}

	out, err := runCtr(t, d.address, "images", "import", stormImages(t, "example.com/storm/a", 0, n))
	require.NoError(t, err, out)
	waitAll(c, n, 3*time.Minute)
	assert.Greater(t, scrape(t, metrics, "lazyconv_rule_jobs_dropped_total"), 0.0, "the queue was full (else this proves nothing)")
	assert.Equal(t, float64(n), scrape(t, metrics, `lazyconv_rule_jobs_total{outcome="converted"}`), "each image converted exactly once")
	assert.LessOrEqual(t, scrape(t, metrics, "lazyconv_rule_queue_length"), 10.0)

	// The second storm, killed midway.
	c.Close()
	done := make(chan error, 1)
	go func() {
		_, err := runCtr(t, d.address, "images", "import", stormImages(t, "example.com/storm/b", n, n))
		done <- err
	}()
	c = d.client(t)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		cur, _ := currentOutputs(t, ctx, c, "example.com/storm/b", "-esgz")
		if cur >= 10 {
			break
		}
		require.True(t, time.Now().Before(deadline), "the second storm does not start:\n%s", tail(d.logText(), 4000))
		time.Sleep(20 * time.Millisecond)
	}
	c.Close()
	d.kill()
	<-done // the import was cut short, or finished: either way images are left unconverted
	d.start()
	c = d.client(t)
	defer c.Close()
	_, srcs := currentOutputs(t, ctx, c, "example.com/storm/", "-esgz")
	waitAll(c, srcs, 3*time.Minute)
	assert.Greater(t, srcs, n+10, "the second storm's images that were imported before the kill are all converted")
	noConversionLeases(t, ctx, c)
	collect(t, ctx, c)
	// Every blob is an image's (or held by the lease of the import the kill
	// cut short, which is ctr's, and expires).
	reachable := reachableContent(t, ctx, c)
	ls, err := c.LeasesService().List(ctx)
	require.NoError(t, err)
	for _, l := range ls {
		rs, err := c.LeasesService().ListResources(ctx, l)
		require.NoError(t, err)
		for _, r := range rs {
			if r.Type == "content" {
				reachable[digest.Digest(r.ID)] = true
			}
		}
	}
	var orphans int
	require.NoError(t, c.ContentStore().Walk(ctx, func(info content.Info) error {
		if !reachable[info.Digest] {
			orphans++
			t.Logf("orphaned: %s %v", info.Digest, info.Labels)
		}
		return nil
	}))
	assert.Zero(t, orphans, "blobs no image or lease holds")
	statuses, err := c.ContentStore().ListStatuses(ctx)
	require.NoError(t, err)
	for _, st := range statuses {
		assert.NotContains(t, st.Ref, "lazyconv", "an ingest of lazyconv's survives")
	}
}

// tail is the end of a long text.
func tail(text string, n int) string {
	if len(text) > n {
		return text[len(text)-n:]
	}
	return text
}

// registryDigest is what a registry's tag resolves to ("" when it has none).
func registryDigest(t *testing.T, host, repo, tag string) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodHead, "http://"+host+"/v2/"+repo+"/manifests/"+tag, nil)
	require.NoError(t, err)
	req.Header.Set("Accept", strings.Join([]string{ocispec.MediaTypeImageIndex, ocispec.MediaTypeImageManifest,
		images.MediaTypeDockerSchema2Manifest, images.MediaTypeDockerSchema2ManifestList}, ", "))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return ""
	}
	require.Equal(t, http.StatusOK, resp.StatusCode)
	return resp.Header.Get("Docker-Content-Digest")
}

// A tag moves from T1 to T2 while a pushing rule converts T1 (a big image):
// T1's result is dropped, T2 is converted behind it, and the registry's
// output tag ends as T2's conversion, never rolled back to T1's.
func TestRuleNeverRollsAPushedOutputBack(t *testing.T) {
	requireRoot(t)
	reg := startRegistry(t)
	d := startDaemon(t, bins.containerdLazyconv, testConfig+`
[[plugins.'io.containerd.grpc.v1.lazyconv'.rules]]
  match = "127.0.0.1:*/rollback/*"
  format = "estargz"
  tag_suffix = "-esgz"
  push = true
`)
	c := d.client(t)
	defer c.Close()
	ctx := nsContext("default")
	ref := reg.host + "/rollback/app:v1"
	t1 := newTestImage(t, ref, 40<<20)
	t2 := newTestImage(t, ref, 0)
	mustLazyconv(t, "--address", d.address, "image", "import", t1.archive)
	deadline := time.Now().Add(60 * time.Second)
	for converting := false; !converting; {
		ls, err := c.LeasesService().List(ctx)
		require.NoError(t, err)
		for _, l := range ls {
			converting = converting || l.Labels[labels.LeaseConverting] == ref
		}
		require.True(t, time.Now().Before(deadline), "T1's conversion never started:\n%s", d.logText())
		time.Sleep(10 * time.Millisecond)
	}
	mustLazyconv(t, "--address", d.address, "image", "import", t2.archive) // the tag moves while T1 converts
	src, err := c.ImageService().Get(ctx, ref)
	require.NoError(t, err)

	// Done: T2's output stored and pushed, and nothing converting any more.
	deadline = time.Now().Add(3 * time.Minute)
	for {
		out, err := c.ImageService().Get(ctx, ref+"-esgz")
		ls, lerr := c.LeasesService().List(ctx)
		require.NoError(t, lerr)
		busy := false
		for _, l := range ls {
			busy = busy || l.Labels[labels.LeaseConverting] != ""
		}
		if err == nil && !busy && out.Labels[labels.ConvertedFromDigest] == src.Target.Digest.String() &&
			out.Labels[labels.RulePushed] == out.Target.Digest.String() {
			assert.Equal(t, out.Target.Digest.String(), registryDigest(t, reg.host, "rollback/app", "v1-esgz"),
				"the registry's output is T2's conversion")
			break
		}
		require.True(t, time.Now().Before(deadline), "T2's output never settled (%v, %v):\n%s", out.Labels, err, d.logText())
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second) // anything still to land would land now
	out, err := c.ImageService().Get(ctx, ref+"-esgz")
	require.NoError(t, err)
	assert.Equal(t, src.Target.Digest.String(), out.Labels[labels.ConvertedFromDigest])
	assert.Equal(t, out.Target.Digest.String(), registryDigest(t, reg.host, "rollback/app", "v1-esgz"))
	assert.Contains(t, d.logText(), "dropped", "T1's result was dropped")
}

// push --force-compression converts into a temporary image of its own: two
// at once do not collide, and a rule matching the name never converts the
// temporary image into a lasting output.
func TestForcedPushesLeaveNoRuleOutputs(t *testing.T) {
	requireRoot(t)
	reg := startRegistry(t)
	d := startDaemon(t, bins.containerdLazyconv, testConfig+`
[[plugins.'io.containerd.grpc.v1.lazyconv'.rules]]
  match = "example.com/forced/*"
  format = "zstdchunked"
  tag_suffix = "-zc"
`)
	src := "example.com/forced/app:v1"
	img := newTestImage(t, src, 0)
	mustLazyconv(t, "--address", d.address, "image", "import", img.archive)
	errs := make(chan error, 2)
	for _, repo := range []string{"one", "two"} {
		go func() {
			out, err := lazyconv(t, "--address", d.address, "image", "push", "--plain-http", "--force-compression", "estargz",
				reg.host+"/forced/"+repo+":v1", src)
			if err != nil {
				err = fmt.Errorf("%v: %s", err, out)
			}
			errs <- err
		}()
	}
	require.NoError(t, <-errs)
	require.NoError(t, <-errs)
	c := d.client(t)
	defer c.Close()
	ctx := nsContext("default")
	deadline := time.Now().Add(60 * time.Second)
	for { // the rule's own conversion of the source
		if _, err := c.ImageService().Get(ctx, src+"-zc"); err == nil {
			break
		}
		require.True(t, time.Now().Before(deadline), "the rule did not convert the source:\n%s", d.logText())
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second) // a conversion of a temporary image would land by now
	imgs, err := c.ImageService().List(ctx)
	require.NoError(t, err)
	var names []string
	for _, i := range imgs {
		names = append(names, i.Name)
	}
	assert.ElementsMatch(t, []string{src, src + "-zc"}, names, "no temporary image, and no output of one")
	assert.NotEmpty(t, registryDigest(t, reg.host, "forced/one", "v1"))
	assert.NotEmpty(t, registryDigest(t, reg.host, "forced/two", "v1"))
}
