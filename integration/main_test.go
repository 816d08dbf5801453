// Package integration runs lazyconv end to end: the real containerd-lazyconv
// daemon, a stock containerd v2.4 with the lazyconvd sidecar, a real registry
// (distribution v3; and go-containerregistry's, with the referrers API, for
// the fleet tests) and the real lazyconv CLI, all on temporary roots and
// sockets, on 127.0.0.1.
package integration

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lazyconv/lazyconv/internal/libdeflate"

	"golang.org/x/crypto/bcrypt"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/stretchr/testify/require"
)

const (
	registryModule   = "github.com/distribution/distribution/v3/cmd/registry@v3.1.2"
	containerdModule = "github.com/containerd/containerd/v2/cmd/containerd@v2.4.2"
	ctrModule        = "github.com/containerd/containerd/v2/cmd/ctr@v2.4.2"
)

// bins holds the paths of the binaries TestMain built.
var bins struct {
	dir, lazyconv, lazyconvd, containerdLazyconv, stockContainerd, registry string
	// referrersRegistry is go-containerregistry's registry with the OCI
	// referrers API (integration/referrersregistry).
	referrersRegistry string
	// sociSnapshotter is soci-snapshotter's snapshotter service behind a
	// main of lazyconv's (integration/socisnapshotter).
	sociSnapshotter string
	// upstreamCtr is containerd v2.4's own ctr; ctr is lazyconv's.
	upstreamCtr, ctr string
}

var skipReason string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		skipReason = "integration tests run containerd, which needs root (CI runs as root)"
	} else if err := buildBinaries(); err != nil {
		fmt.Fprintln(os.Stderr, "building binaries:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func requireRoot(t *testing.T) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
}

// buildBinaries builds lazyconv's binaries from this tree, and the registry
// and stock containerd through the Go module proxy, into bin/integration.
func buildBinaries() error {
	repo, err := filepath.Abs("..")
	if err != nil {
		return err
	}
	bins.dir = filepath.Join(repo, "bin", "integration")
	bins.lazyconv = filepath.Join(bins.dir, "lazyconv")
	bins.lazyconvd = filepath.Join(bins.dir, "lazyconvd")
	bins.containerdLazyconv = filepath.Join(bins.dir, "containerd-lazyconv")
	bins.stockContainerd = filepath.Join(bins.dir, "stock", "containerd")
	bins.registry = filepath.Join(bins.dir, "registry")
	bins.referrersRegistry = filepath.Join(bins.dir, "referrersregistry")
	bins.sociSnapshotter = filepath.Join(bins.dir, "socisnapshotter")
	bins.upstreamCtr = filepath.Join(bins.dir, "upstream", "ctr")
	bins.ctr = filepath.Join(bins.dir, "ctr")
	for _, b := range []struct{ out, pkg string }{
		{bins.lazyconv, "./cmd/lazyconv"},
		{bins.lazyconvd, "./cmd/lazyconvd"},
		{bins.containerdLazyconv, "./cmd/containerd-lazyconv"},
		{bins.ctr, "./cmd/ctr"},
	} {
		if err := goCmd(repo, nil, "build", "-tags", buildTags(), "-o", b.out, b.pkg); err != nil {
			return err
		}
	}
	// A module of its own (its dependency is not lazyconv's).
	if err := goCmd(filepath.Join(repo, "integration", "referrersregistry"), nil, "build", "-o", bins.referrersRegistry, "."); err != nil {
		return err
	}
	if err := goCmd(filepath.Join(repo, "integration", "socisnapshotter"), nil, "build", "-o", bins.sociSnapshotter, "."); err != nil {
		return err
	}
	for _, b := range []struct{ out, module string }{
		{bins.registry, registryModule},
		{bins.stockContainerd, containerdModule},
		{bins.upstreamCtr, ctrModule},
	} {
		if _, err := os.Stat(b.out); err == nil {
			continue
		}
		env := []string{"GOBIN=" + filepath.Dir(b.out), "GOFLAGS=-buildvcs=false"}
		if err := goCmd(os.TempDir(), env, "install", "-tags", "no_btrfs", b.module); err != nil {
			return err
		}
	}
	return nil
}

func goCmd(dir string, env []string, args ...string) error {
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// shortTempDir is a temporary directory with a path short enough for unix sockets.
func shortTempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("/tmp", "lc")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// testConfig is a containerd config with lazyconv required and CRI off (it
// is slow to start and irrelevant here).
const testConfig = `version = 4
required_plugins = ["io.containerd.grpc.v1.lazyconv"]
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime"]
`

// stockConfig is a stock containerd's config.
const stockConfig = `version = 4
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime"]
`

// daemon is a containerd process on its own root, state and socket.
type daemon struct {
	t       *testing.T
	bin     string
	dir     string
	config  string
	address string
	cmd     *exec.Cmd
	logPath string
	done    chan error
}

func startDaemon(t *testing.T, bin, config string) *daemon {
	t.Helper()
	dir := shortTempDir(t)
	d := &daemon{t: t, bin: bin, dir: dir, config: filepath.Join(dir, "config.toml"),
		address: filepath.Join(dir, "c.sock"), logPath: filepath.Join(dir, "containerd.log")}
	require.NoError(t, os.WriteFile(d.config, []byte(config), 0o644))
	d.start()
	t.Cleanup(d.stop)
	return d
}

// startDaemonExpectingFailure runs a daemon whose config must stop it from
// starting (lazyconv is a required plugin), and returns its log.
func startDaemonExpectingFailure(t *testing.T, bin, config string) string {
	t.Helper()
	dir := shortTempDir(t)
	cfg := filepath.Join(dir, "config.toml")
	require.NoError(t, os.WriteFile(cfg, []byte(config), 0o644))
	cmd := exec.Command(bin, "--config", cfg, "--root", filepath.Join(dir, "root"),
		"--state", filepath.Join(dir, "state"), "--address", filepath.Join(dir, "c.sock"))
	done := make(chan struct{})
	timer := time.AfterFunc(30*time.Second, func() {
		select {
		case <-done:
		default:
			_ = cmd.Process.Kill()
		}
	})
	defer timer.Stop()
	out, err := cmd.CombinedOutput()
	close(done)
	require.Error(t, err, "containerd started with a config it should refuse:\n%s", out)
	return string(out)
}

func (d *daemon) start() {
	d.t.Helper()
	logf, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	require.NoError(d.t, err)
	d.cmd = exec.Command(d.bin, "--config", d.config, "--root", filepath.Join(d.dir, "root"),
		"--state", filepath.Join(d.dir, "state"), "--address", d.address)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	require.NoError(d.t, d.cmd.Start())
	d.done = make(chan error, 1)
	go func() { d.done <- d.cmd.Wait(); logf.Close() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := containerd.New(d.address, containerd.WithTimeout(time.Second))
		if err == nil {
			_, err = c.Version(context.Background())
			c.Close()
			if err == nil {
				return
			}
		}
		select {
		case werr := <-d.done:
			d.t.Fatalf("containerd exited: %v\n%s", werr, d.logText())
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("containerd did not come up: %v\n%s", err, d.logText())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop ends the daemon with SIGTERM.
func (d *daemon) stop() {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(15 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
	}
	d.cmd = nil
}

// kill ends the daemon with SIGKILL, as a crash would.
func (d *daemon) kill() {
	require.NoError(d.t, d.cmd.Process.Signal(syscall.SIGKILL))
	<-d.done
	d.cmd = nil
}

func (d *daemon) logText() string {
	b, _ := os.ReadFile(d.logPath)
	return string(b)
}

func (d *daemon) client(t *testing.T) *containerd.Client {
	t.Helper()
	c, err := containerd.New(d.address)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func nsContext(ns string) context.Context {
	return namespaces.WithNamespace(context.Background(), ns)
}

// lazyconv runs the CLI and returns its combined output.
func lazyconv(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(bins.lazyconv, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func mustLazyconv(t *testing.T, args ...string) string {
	t.Helper()
	out, err := lazyconv(t, args...)
	require.NoError(t, err, "lazyconv %s:\n%s", strings.Join(args, " "), out)
	return out
}

// registry is a registry on 127.0.0.1: distribution v3, or (referrersAPI)
// go-containerregistry's with the referrers API.
type registry struct {
	host    string
	logPath string
	// referrersAPI: the registry lists referrers itself (distribution v3
	// has no referrers API: clients keep the referrers tag schema).
	referrersAPI bool
}

func startRegistry(t *testing.T) *registry { return startRegistryWith(t, "", "") }

// startAuthRegistry starts a registry that lets only user in (htpasswd), on
// addr ("": a free port of 127.0.0.1).
func startAuthRegistry(t *testing.T, addr, user, password string) *registry {
	t.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	require.NoError(t, err)
	htpasswd := filepath.Join(shortTempDir(t), "htpasswd")
	require.NoError(t, os.WriteFile(htpasswd, []byte(user+":"+string(hash)+"\n"), 0o600))
	return startRegistryWith(t, addr, fmt.Sprintf("auth:\n  htpasswd:\n    realm: lazyconv-test\n    path: %s\n", htpasswd))
}

func startRegistryWith(t *testing.T, addr, extra string) *registry {
	t.Helper()
	dir := shortTempDir(t)
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	l, err := net.Listen("tcp", addr)
	if err != nil && addr != "127.0.0.1:0" {
		t.Skipf("cannot listen on %s for a registry: %v", addr, err)
	}
	require.NoError(t, err)
	host := l.Addr().String()
	l.Close()
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
%s`, filepath.Join(dir, "data"), host, extra)
	cfgPath := filepath.Join(dir, "config.yml")
	require.NoError(t, os.WriteFile(cfgPath, []byte(cfg), 0o644))
	r := &registry{host: host, logPath: filepath.Join(dir, "registry.log")}
	logf, err := os.Create(r.logPath)
	require.NoError(t, err)
	cmd := exec.Command(bins.registry, "serve", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logf.Close()
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + host + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || (extra != "" && resp.StatusCode == http.StatusUnauthorized) {
				return r
			}
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(r.logPath)
			t.Fatalf("registry did not come up: %v\n%s", err, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// buildTags are the tags the binaries under test are built with: this test
// binary's own (libdeflate where it has it) and no btrfs.
func buildTags() string {
	if libdeflate.Available {
		return "no_btrfs,libdeflate"
	}
	return "no_btrfs"
}
