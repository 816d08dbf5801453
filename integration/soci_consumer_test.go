package integration

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/internal/imagegen"
)

// startSociSnapshotter runs soci-snapshotter's snapshotter on the socket
// sock (in dir), reading from the plain-HTTP registry host and the content
// store of the containerd at containerdAddress, with no background fetch
// (every byte it reads is one a read asked for).
func startSociSnapshotter(t *testing.T, dir, sock, registryHost, containerdAddress string) {
	t.Helper()
	cfg := filepath.Join(dir, "config.toml")
	require.NoError(t, os.WriteFile(cfg, []byte(fmt.Sprintf(`[background_fetch]
disable = true

[content_store]
containerd_address = %q

[[resolver.host.%q.mirrors]]
host = "http://%s"
insecure = true
`, containerdAddress, registryHost, registryHost)), 0o644))
	logf, err := os.Create(filepath.Join(dir, "soci.log"))
	require.NoError(t, err)
	cmd := exec.Command(bins.sociSnapshotter, "--address", sock, "--root", filepath.Join(dir, "root"), "--config", cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("soci-snapshotter's log:\n%s", b)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return
		}
		require.True(t, time.Now().Before(deadline), "soci-snapshotter did not listen")
		time.Sleep(50 * time.Millisecond)
	}
}

// registryBytes sums the bytes the registry's access log says it sent for
// GETs of the blob d.
func registryBytes(log string, d digest.Digest) int64 {
	var n int64
	for _, m := range regexp.MustCompile(`"GET /v2/[^ ]*/blobs/`+regexp.QuoteMeta(d.String())+` [^"]*" \d+ (\d+)`).FindAllStringSubmatch(log, -1) {
		v, _ := strconv.ParseInt(m[1], 10, 64)
		n += v
	}
	return n
}

// The consumer: a SOCI-enabled image made by lazyconv and pushed to the
// registry is pulled by another node with soci-snapshotter (its own
// snapshotter service, a proxy snapshotter of containerd) and read
// through its FUSE mount: the files read are the source's, and the
// registry served far fewer bytes of the big layer than its size (spans
// of it, not the whole).
func TestSOCISnapshotterReadsLazyconvsImage(t *testing.T) {
	requireRoot(t)
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse: soci-snapshotter mounts with FUSE")
	}
	reg := startRegistry(t)
	// The source: one big layer of 48 files of 512 KiB (random: 24 MiB of
	// gzip), one small one (below the minimum: no zTOC, fetched whole).
	rnd := rand.New(rand.NewSource(22))
	var big []imagegen.Entry
	files := map[string][]byte{}
	for i := range 48 {
		body := make([]byte, 512<<10)
		rnd.Read(body)
		name := fmt.Sprintf("opt/data/file-%02d.bin", i)
		files[name] = body
		big = append(big, imagegen.Entry{Header: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, ModTime: epoch}, Body: body})
	}
	small := []imagegen.Entry{{Header: tar.Header{Name: "etc/os-release", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: epoch}, Body: []byte("ID=lazyconv\n")}}
	files["etc/os-release"] = small[0].Body
	src := reg.host + "/soci/app:v1"
	img := imagegen.Image{Name: src}
	// The big layer first: containerd's unpacker fetches every layer after
	// one that is not remote (the small one has no zTOC), in parallel.
	for _, entries := range [][]imagegen.Entry{big, small} {
		img.Layers = append(img.Layers, imagegen.Layer{MediaType: ocispec.MediaTypeImageLayerGzip, Blob: imagegen.Compress(imagegen.TarBytes(entries), "gzip")})
	}
	archive := filepath.Join(shortTempDir(t), "app.tar")
	require.NoError(t, imagegen.WriteOCIArchiveFile(archive, img))

	// Node A converts and pushes.
	a := startDaemon(t, bins.containerdLazyconv, testConfig)
	mustLazyconv(t, "--address", a.address, "image", "import", archive)
	mustLazyconv(t, "--address", a.address, "image", "convert", "--soci", "--soci-span-size", "1048576", src, src+"-soci")
	mustLazyconv(t, "--address", a.address, "image", "push", "--plain-http", src+"-soci")
	bigLayer := sourceLayers(t, a, src)[0]

	// Node B pulls it with soci-snapshotter and reads two files.
	sociDir := shortTempDir(t)
	sock := filepath.Join(sociDir, "soci.sock")
	b := startDaemon(t, bins.containerdLazyconv, testConfig+fmt.Sprintf(`
[proxy_plugins.soci]
  type = "snapshot"
  address = %q
`, sock))
	startSociSnapshotter(t, sociDir, sock, reg.host, b.address)
	c := b.client(t)
	ctx := nsContext("default")
	_, offset := reg.logSince(t, 0)
	ref := src + "-soci"
	pulled, err := c.Pull(ctx, ref, containerd.WithPullUnpack, containerd.WithPullSnapshotter("soci"),
		containerd.WithImageHandlerWrapper(snapshotters.AppendInfoHandlerWrapper(ref)),
		containerd.WithResolver(docker.NewResolver(docker.ResolverOptions{Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchAllHosts))})))
	require.NoError(t, err)
	diffIDs, err := pulled.RootFS(ctx)
	require.NoError(t, err)
	sn := c.SnapshotService("soci")
	mounts, err := sn.View(ctx, "read", identity.ChainID(diffIDs).String())
	require.NoError(t, err)
	defer sn.Remove(context.WithoutCancel(ctx), "read") //nolint:errcheck
	dir := t.TempDir()
	require.NoError(t, mount.All(mounts, dir))
	defer mount.UnmountAll(dir, 0) //nolint:errcheck
	for _, name := range []string{"etc/os-release", "opt/data/file-07.bin", "opt/data/file-31.bin"} {
		got, err := os.ReadFile(filepath.Join(dir, name))
		require.NoError(t, err)
		assert.True(t, bytes.Equal(files[name], got), "%s is the source's", name)
	}
	entries, err := os.ReadDir(filepath.Join(dir, "opt/data"))
	require.NoError(t, err)
	assert.Len(t, entries, 48, "every file listed (from the zTOC)")

	log, _ := reg.logSince(t, offset)
	served := registryBytes(log, bigLayer.Digest)
	t.Logf("the registry served %d of the big layer's %d bytes", served, bigLayer.Size)
	assert.Positive(t, served, "read lazily from the registry")
	if !assert.Less(t, served, bigLayer.Size/3, "far fewer bytes than the layer: spans, not the whole") {
		for _, l := range regexp.MustCompile(`(?m)^.*/blobs/`+regexp.QuoteMeta(bigLayer.Digest.String())+` .*$`).FindAllString(log, -1) {
			t.Log(l)
		}
	}
}
