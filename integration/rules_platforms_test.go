package integration

import (
	"archive/tar"
	"encoding/json"
	"net/http"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/internal/imagegen"
	"github.com/lazyconv/lazyconv/labels"
)

// multiPlatformArchive is an archive of name as an index of a linux/amd64
// and a linux/arm64 image.
func multiPlatformArchive(t *testing.T, name string) string {
	t.Helper()
	var imgs []imagegen.Image
	for _, arch := range []string{"amd64", "arm64"} {
		layer := imagegen.TarBytes([]imagegen.Entry{{Header: tar.Header{Name: "arch", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: epoch},
			Body: []byte(arch + "\n")}})
		imgs = append(imgs, imagegen.Image{Platform: &ocispec.Platform{OS: "linux", Architecture: arch},
			Layers: []imagegen.Layer{{MediaType: ocispec.MediaTypeImageLayerGzip, Blob: imagegen.Compress(layer, "gzip")}}})
	}
	path := filepath.Join(t.TempDir(), "multi.tar")
	require.NoError(t, imagegen.WriteOCIArchiveIndexFile(path, name, imgs...))
	return path
}

// registryPlatforms lists the platforms of a registry's index.
func registryPlatforms(t *testing.T, host, repo, tag string) []string {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+host+"/v2/"+repo+"/manifests/"+tag, nil)
	require.NoError(t, err)
	req.Header.Set("Accept", ocispec.MediaTypeImageIndex)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var index ocispec.Index
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&index))
	var out []string
	for _, m := range index.Manifests {
		require.NotNil(t, m.Platform)
		out = append(out, platforms.Format(*m.Platform))
	}
	return out
}

// A rule converts every platform its source lists, though a pull of one
// platform left only that one's manifest here: the others are fetched from
// the registry as a lazy pull would, and the pushed output carries them
// all. A rule limited to fewer platforms than the registry's output tag
// holds refuses to push over it (the failure is labelled on the source).
func TestRulesConvertEveryPlatformAndNeverPushFewer(t *testing.T) {
	requireRoot(t)
	reg := startRegistry(t)
	d := startDaemon(t, bins.containerdLazyconv, testConfig+`
[[plugins.'io.containerd.grpc.v1.lazyconv'.rules]]
  match = "127.0.0.1:*/multi/*"
  format = "estargz"
  tag_suffix = "-esgz"
  namespaces = ["default"]
  push = true
[[plugins.'io.containerd.grpc.v1.lazyconv'.rules]]
  match = "127.0.0.1:*/multi/*"
  format = "zstdchunked"
  tag_suffix = "-zc"
  namespaces = ["default"]
  platforms = ["linux/amd64"]
  push = true
`)
	c := d.client(t)
	defer c.Close()
	ref := reg.host + "/multi/app:v1"
	ctr := func(args ...string) {
		t.Helper()
		out, err := exec.Command(bins.ctr, append([]string{"--address", d.address}, args...)...).CombinedOutput()
		require.NoError(t, err, string(out))
	}
	// Published from another namespace: the image, and under the -zc
	// output's name a two-platform image the amd64-only rule must not replace.
	ctr("-n", "ci", "images", "import", "--all-platforms", multiPlatformArchive(t, ref))
	ctr("-n", "ci", "images", "push", "--plain-http", ref)
	ctr("-n", "ci", "images", "tag", ref, ref+"-zc")
	ctr("-n", "ci", "images", "push", "--plain-http", ref+"-zc")
	zcBefore := registryDigest(t, reg.host, "multi/app", "v1-zc")

	mustLazyconv(t, "--address", d.address, "image", "pull", "--lazy", "--plain-http", "--platform", "linux/amd64", ref)
	ctx := nsContext("default")
	deadline := time.Now().Add(90 * time.Second)
	for {
		out, err := c.ImageService().Get(ctx, ref+"-esgz")
		if err == nil && out.Labels[labels.RulePushed] == out.Target.Digest.String() {
			break
		}
		require.True(t, time.Now().Before(deadline), "the rule did not convert and push:\n%s", d.logText())
		time.Sleep(200 * time.Millisecond)
	}
	assert.ElementsMatch(t, []string{"linux/amd64", "linux/arm64"}, registryPlatforms(t, reg.host, "multi/app", "v1-esgz"),
		"the pushed output has every platform of its source")
	out, err := c.ImageService().Get(ctx, ref+"-esgz")
	require.NoError(t, err)
	ps, err := images.Platforms(ctx, c.ContentStore(), out.Target)
	require.NoError(t, err)
	assert.Len(t, ps, 2)

	deadline = time.Now().Add(60 * time.Second)
	for {
		src, err := c.ImageService().Get(ctx, ref)
		require.NoError(t, err)
		if reason := src.Labels[labels.RuleFailed]; reason != "" {
			assert.Contains(t, reason, "linux/arm64")
			assert.Contains(t, reason, "platforms it lacks")
			break
		}
		require.True(t, time.Now().Before(deadline), "the amd64-only rule did not refuse:\n%s", d.logText())
		time.Sleep(200 * time.Millisecond)
	}
	assert.Equal(t, zcBefore, registryDigest(t, reg.host, "multi/app", "v1-zc"), "the registry's two-platform tag is left as it was")
}
