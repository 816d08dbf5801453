package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/platforms"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/labels"
)

// The tools are built in throwaway modules that require them: `go install
// pkg@version` refuses BuildKit's go.mod (it has exclude directives), and
// nerdctl's version list is not served (nor is it in the checksum database).
var buildToolModules = []struct {
	module, version string
	pkgs            []string
}{
	{"github.com/moby/buildkit", "v0.26.0", []string{"github.com/moby/buildkit/cmd/buildkitd", "github.com/moby/buildkit/cmd/buildctl"}},
	{"github.com/containerd/nerdctl/v2", "v2.0.5", []string{"github.com/containerd/nerdctl/v2/cmd/nerdctl"}},
}

var (
	buildTools     sync.Once
	buildToolsDir  string
	buildToolsFail error
)

// buildkitTools builds buildkitd, buildctl and nerdctl through the Go module
// proxy once (into bin/integration/buildkit, kept between runs) and returns
// their directory.
func buildkitTools(t *testing.T) string {
	t.Helper()
	buildTools.Do(func() {
		buildToolsDir = filepath.Join(bins.dir, "buildkit")
		env := []string{"GOFLAGS=-buildvcs=false -mod=mod", "GONOSUMDB=github.com/containerd/nerdctl"}
		for _, m := range buildToolModules {
			built := true
			for _, p := range m.pkgs {
				if _, err := os.Stat(filepath.Join(buildToolsDir, filepath.Base(p))); err != nil {
					built = false
				}
			}
			if built {
				continue
			}
			mod, err := os.MkdirTemp("", "lazyconv-tools-")
			if err != nil {
				buildToolsFail = err
				return
			}
			defer os.RemoveAll(mod)
			for _, args := range [][]string{
				{"mod", "init", "lazyconv.test/tools"},
				{"get", m.module + "@" + m.version},
				append([]string{"build", "-o", buildToolsDir + "/"}, m.pkgs...),
			} {
				if err := goCmd(mod, env, args...); err != nil {
					buildToolsFail = err
					return
				}
			}
		}
	})
	require.NoError(t, buildToolsFail)
	return buildToolsDir
}

// buildkitd runs BuildKit with its containerd worker on d (native
// snapshotter, no OCI worker: the builds here run no container).
func startBuildkitd(t *testing.T, tools string, d *daemon) string {
	t.Helper()
	dir := shortTempDir(t)
	sock := "unix://" + filepath.Join(dir, "buildkitd.sock")
	logf, err := os.Create(filepath.Join(dir, "buildkitd.log"))
	require.NoError(t, err)
	cmd := exec.Command(filepath.Join(tools, "buildkitd"), "--root", filepath.Join(dir, "root"), "--addr", sock,
		"--oci-worker=false", "--containerd-worker=true", "--containerd-worker-addr", d.address,
		"--containerd-worker-namespace", "default", "--containerd-worker-snapshotter", "native")
	cmd.Stdout, cmd.Stderr = logf, logf
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); logf.Close() })
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := exec.Command(filepath.Join(tools, "buildctl"), "--addr", sock, "debug", "workers").CombinedOutput()
		if err == nil && strings.Contains(string(out), "linux/") {
			return sock
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("buildkitd did not come up: %s\n%s", out, b)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// buildContext is a Dockerfile that needs no runtime: FROM scratch + COPY.
func buildContext(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\nCOPY hello.txt /hello.txt\nCOPY data/ /data/\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "hello.txt"), []byte("hello from a build\n"), 0o644))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "data"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "data", "blob"), []byte(strings.Repeat("lazy ", 100000)), 0o644))
	return dir
}

// `nerdctl build` against containerd-lazyconv, BuildKit's containerd worker
// writing the image: a rule converts it with no further command; `nerdctl
// push` pushes the conversion; pulled back into a fresh namespace, it verifies.
func TestNerdctlBuildIsConvertedByARule(t *testing.T) {
	requireRoot(t)
	tools := buildkitTools(t)
	reg := startRegistry(t)
	d := startDaemon(t, bins.containerdLazyconv, testConfig+fmt.Sprintf(`
[[plugins.'io.containerd.grpc.v1.lazyconv'.rules]]
  match = %q
  format = "estargz"
  tag_suffix = "-esgz"
`, reg.host+"/built/*"))
	bk := startBuildkitd(t, tools, d)
	ref := reg.host + "/built/app:v1"
	nerdctl := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(filepath.Join(tools, "nerdctl"), append([]string{"--address", d.address, "--namespace", "default",
			"--snapshotter", "native"}, args...)...)
		cmd.Env = append(os.Environ(), "PATH="+tools+":"+os.Getenv("PATH"), "BUILDKIT_HOST="+bk)
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "nerdctl %s:\n%s", strings.Join(args, " "), out)
		return string(out)
	}
	nerdctl("build", "--buildkit-host", bk, "-t", ref, buildContext(t))

	c := d.client(t)
	ctx := nsContext("default")
	deadline := time.Now().Add(90 * time.Second)
	for {
		if _, err := c.ImageService().Get(ctx, ref+"-esgz"); err == nil {
			break
		}
		require.True(t, time.Now().Before(deadline), "the rule did not convert the build:\n%s", d.logText())
		time.Sleep(200 * time.Millisecond)
	}
	nerdctl("push", "--insecure-registry", ref+"-esgz")

	out := mustLazyconv(t, "--address", d.address, "-n", "fresh", "image", "pull", "--plain-http", ref+"-esgz")
	assert.Contains(t, out, ref+"-esgz")
	out = mustLazyconv(t, "--address", d.address, "-n", "fresh", "image", "verify", ref+"-esgz")
	assert.Contains(t, out, "lazy-pull layers verified")
}

// BuildKit's own eStargz output (compression=estargz) carries BuildKit's
// buildkit.io/compression/estargz label: lazyconv keeps those layers from the
// label, reading none of their bytes.
func TestBuildKitEStargzLayersAreKeptFromItsLabels(t *testing.T) {
	requireRoot(t)
	tools := buildkitTools(t)
	d := startDaemon(t, bins.containerdLazyconv, testConfig)
	bk := startBuildkitd(t, tools, d)
	ref := "example.com/buildkit/app:v1"
	dir := buildContext(t)
	out, err := exec.Command(filepath.Join(tools, "buildctl"), "--addr", bk, "build", "--frontend", "dockerfile.v0",
		"--local", "context="+dir, "--local", "dockerfile="+dir,
		"--output", "type=image,name="+ref+",compression=estargz,oci-mediatypes=true,force-compression=true").CombinedOutput()
	require.NoError(t, err, "buildctl build:\n%s", out)

	c := d.client(t)
	ctx := nsContext("default")
	img, err := c.ImageService().Get(ctx, ref)
	require.NoError(t, err)
	m, err := images.Manifest(ctx, c.ContentStore(), img.Target, platforms.All)
	require.NoError(t, err)
	require.NotEmpty(t, m.Layers)
	for _, l := range m.Layers {
		info, err := c.ContentStore().Info(ctx, l.Digest)
		require.NoError(t, err)
		assert.Equal(t, "true", info.Labels[labels.EStargz], "BuildKit labelled layer %s", l.Digest)
	}
	out2 := mustLazyconv(t, "--address", d.address, "image", "convert", "--estargz", "--oci", ref, ref+"-again")
	// One progress line per layer: kept, and not one byte read.
	assert.Len(t, regexp.MustCompile(`(?m)^sha256:\S+\s+kept\s+in\s+0 B\s`).FindAllString(out2, -1), len(m.Layers), out2)
	assert.Contains(t, out2, img.Target.Digest.String(), "every layer kept: the image is unchanged")
}
