package recorder_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/internal/imagegen"
	"github.com/lazyconv/lazyconv/localstore"
	"github.com/lazyconv/lazyconv/recorder"
)

// reader is the workload: it reads two files and nothing else.
const reader = `package main

import "os"

func main() {
	for _, p := range []string{"/etc/app.conf", "/data/used"} {
		if _, err := os.ReadFile(p); err != nil {
			panic(err)
		}
	}
}
`

func TestRunRecordsWhatTheEntrypointReads(t *testing.T) {
	needRunc(t)
	app, err := os.ReadFile(goBinary(t, reader))
	require.NoError(t, err)

	f := layeredImage(t)
	layers := [][]imagegen.Entry{
		{dir0("bin/"), {Header: tar.Header{Name: "bin/app", Typeflag: tar.TypeReg, Mode: 0o755}, Body: app},
			dir0("etc/"), reg("etc/app.conf", "conf"), dir0("data/"), reg("data/unused", "never read")},
		{dir0("data/"), reg("data/used", "read at start")},
	}
	img := imagegen.Image{Name: "reader:v1", Config: &ocispec.ImageConfig{Entrypoint: []string{"/bin/app"}}}
	for _, l := range layers {
		img.Layers = append(img.Layers, imagegen.Layer{MediaType: ocispec.MediaTypeImageLayerGzip, Blob: imagegen.Compress(imagegen.TarBytes(l), "gzip")})
	}
	target, err := imagegen.Store(f.ctx, f.store.ContentStore(), f.store.ImageStore(), img)
	require.NoError(t, err)

	sd := stateDir(t)
	rec, err := recorder.RunAndRecord(f.ctx, f.store.ContentStore(), target, platforms.All, recorder.RunOptions{Period: 20 * time.Second, StateDir: sd})
	require.NoError(t, err)
	assert.Empty(t, tornDown(t, sd, os.Getpid()), "the container and its state are gone")
	layerOf := map[string]int{}
	for _, e := range rec.Entries() {
		layerOf[e.Path] = *e.LayerIndex
	}
	t.Logf("recorded: %v", layerOf)
	assert.Equal(t, 0, layerOf["etc/app.conf"])
	assert.Equal(t, 1, layerOf["data/used"])
	assert.NotContains(t, layerOf, "data/unused", "a file the workload never reads is not recorded")
}

func dir0(name string) imagegen.Entry { return dir(name) }

// goBinary builds a static Go program from src and returns its path.
func goBinary(t *testing.T, src string) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module workload\n\ngo 1.22\n"), 0o644))
	build := exec.Command("go", "build", "-o", "app", ".")
	build.Dir = dir
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-buildvcs=false")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "%s", out)
	return filepath.Join(dir, "app")
}

// needRunc skips a test that runs a workload where that cannot be done.
func needRunc(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("recording a workload runs runc and fanotify, which need root (CI runs as root)")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("no runc on PATH (.ci/run installs Debian's runc)")
	}
}

// whoami is a workload that tells who it runs as by the files it reads:
// /ids/uid-N and /ids/gid-N (its real IDs as it sees them), /ids/userns-yes
// or -no (whether its user namespace is not the host's), /ids/seccomp-N
// (its seccomp mode, 2 for a filter) and /ids/nnp-N (no new privileges);
// then it sleeps for its argument, if any.
const whoami = `package main

import (
	"os"
	"strings"
	"time"
)

func main() {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		panic(err)
	}
	id := func(key string) string {
		for _, l := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(l, key); ok {
				return strings.Fields(v)[0]
			}
		}
		return "unknown"
	}
	userns := "yes"
	if m, err := os.ReadFile("/proc/self/uid_map"); err == nil && strings.Join(strings.Fields(string(m)), " ") == "0 0 4294967295" {
		userns = "no"
	}
	for _, p := range []string{"/ids/uid-" + id("Uid:"), "/ids/gid-" + id("Gid:"), "/ids/userns-" + userns,
		"/ids/seccomp-" + id("Seccomp:"), "/ids/nnp-" + id("NoNewPrivs:")} {
		_, _ = os.ReadFile(p)
	}
	if len(os.Args) > 1 {
		d, _ := time.ParseDuration(os.Args[1])
		time.Sleep(d)
	}
}
`

// whoamiImage stores an image whose entrypoint is whoami (built at bin),
// with an /etc/passwd and /etc/group naming app (1234:2345), the image
// config's user being user.
func whoamiImage(t *testing.T, f *fixture, bin, name, user string) ocispec.Descriptor {
	t.Helper()
	app, err := os.ReadFile(bin)
	require.NoError(t, err)
	entries := []imagegen.Entry{
		dir("bin/"), {Header: tar.Header{Name: "bin/whoami", Typeflag: tar.TypeReg, Mode: 0o755}, Body: app},
		dir("etc/"), reg("etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1234:2345::/:/bin/sh\n"), reg("etc/group", "root:x:0:\napp:x:2345:\n"),
		dir("ids/"),
	}
	for _, id := range []string{"uid-0", "gid-0", "uid-1000", "gid-1000", "uid-1234", "gid-2345", "uid-65534", "gid-65534", "userns-yes", "userns-no",
		"seccomp-0", "seccomp-2", "nnp-0", "nnp-1"} {
		entries = append(entries, reg("ids/"+id, id))
	}
	img := imagegen.Image{Name: name, Config: &ocispec.ImageConfig{Entrypoint: []string{"/bin/whoami"}, User: user},
		Layers: []imagegen.Layer{{MediaType: ocispec.MediaTypeImageLayerGzip, Blob: imagegen.Compress(imagegen.TarBytes(entries), "gzip")}}}
	target, err := imagegen.Store(f.ctx, f.store.ContentStore(), f.store.ImageStore(), img)
	require.NoError(t, err)
	return target
}

// stateDir is a state dir for runs that others can search (as a user
// namespace's root must), unlike a bare t.TempDir.
func stateDir(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	require.NoError(t, os.Chmod(filepath.Dir(d), 0o711))
	require.NoError(t, os.Chmod(d, 0o711))
	return d
}

// tornDown says what is left in stateDir, the mounts and the cgroups of the
// runs of process pid ("" if nothing).
func tornDown(t *testing.T, stateDir string, pid int) string {
	t.Helper()
	var left []string
	out, err := exec.Command("runc", "--root", filepath.Join(stateDir, "runc"), "list", "-q").CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		left = append(left, fmt.Sprintf("runc list: %v %s", err, bytes.TrimSpace(out)))
	}
	entries, err := os.ReadDir(stateDir)
	require.NoError(t, err)
	for _, e := range entries {
		if e.Name() != "runc" {
			left = append(left, "state dir entry "+e.Name())
		}
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	if bytes.Contains(mounts, []byte(stateDir)) {
		left = append(left, "a mount in the state dir")
	}
	prefix := fmt.Sprintf("lazyconv-record-%d-", pid)
	for _, pattern := range []string{"/sys/fs/cgroup/*/lazyconv-recorder/" + prefix + "*", "/sys/fs/cgroup/lazyconv-recorder/" + prefix + "*"} {
		cgroups, _ := filepath.Glob(pattern)
		left = append(left, cgroups...)
	}
	return strings.Join(left, "; ")
}

// recordedIDs are the ids/ files the workload read.
func recordedIDs(rec *recorder.Recorder) []string {
	var ids []string
	for _, e := range rec.Entries() {
		if id, ok := strings.CutPrefix(e.Path, "ids/"); ok {
			ids = append(ids, id)
		}
	}
	return ids
}

func TestRunSandboxesTheWorkload(t *testing.T) {
	needRunc(t)
	bin := goBinary(t, whoami)
	userns := "userns-yes"
	if err := recorder.ProbeUserNamespace("runc"); err != nil {
		t.Logf("no user namespace here (%v): the workload runs without one", err)
		userns = "userns-no"
	}
	cases := []struct {
		name, imageUser, optUser string
		want                     []string
	}{
		{name: "an image without a user runs as nobody", want: []string{"uid-65534", "gid-65534", userns, "seccomp-2", "nnp-1"}},
		{name: "the image's uid:gid", imageUser: "1000:1000", want: []string{"uid-1000", "gid-1000", userns, "seccomp-2", "nnp-1"}},
		{name: "the image's user by name", imageUser: "app", want: []string{"uid-1234", "gid-2345", userns, "seccomp-2", "nnp-1"}},
		{name: "root when the image says so", imageUser: "root", want: []string{"uid-0", "gid-0", userns, "seccomp-2", "nnp-1"}},
		{name: "the options' user over the image's", imageUser: "root", optUser: "app", want: []string{"uid-1234", "gid-2345", userns, "seccomp-2", "nnp-1"}},
	}
	f := layeredImage(t)
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sd := stateDir(t)
			target := whoamiImage(t, f, bin, fmt.Sprintf("whoami:%d", i), c.imageUser)
			rec, err := recorder.RunAndRecord(f.ctx, f.store.ContentStore(), target, platforms.All,
				recorder.RunOptions{Period: 20 * time.Second, StateDir: sd, User: c.optUser})
			require.NoError(t, err)
			assert.ElementsMatch(t, c.want, recordedIDs(rec))
			assert.Empty(t, tornDown(t, sd, os.Getpid()), "the container and its state are gone")
		})
	}
}

// refusingRunc is a runc that refuses to create a container in a user
// namespace, as runc does where the kernel will not mount /proc in one.
const refusingRunc = `#!/bin/sh
prev=
for a in "$@"; do
	if [ "$prev" = --bundle ] && grep -q '"type":"user"' "$a/config.json"; then
		echo 'runc create failed: unable to start container process: error mounting "proc": operation not permitted' >&2
		exit 1
	fi
	prev=$a
done
exec runc "$@"
`

func TestRunWithoutUserNamespace(t *testing.T) {
	needRunc(t)
	f := layeredImage(t)
	bin := goBinary(t, whoami)
	refusing := filepath.Join(t.TempDir(), "runc")
	require.NoError(t, os.WriteFile(refusing, []byte(refusingRunc), 0o755))
	cases := []struct {
		name       string
		unsearched bool // a state dir that others cannot search
		runc       string
		mode       recorder.UserNamespaceMode
		wantError  error
		wantErrMsg string
	}{
		{name: "turned off", mode: recorder.UserNamespaceOff},
		{name: "a state dir others cannot search", unsearched: true},
		{name: "runc refuses one", runc: refusing},
		{name: "required where there can be none", unsearched: true, mode: recorder.UserNamespaceRequire, wantError: errdefs.ErrUnavailable},
		{name: "required and refused by runc", runc: refusing, mode: recorder.UserNamespaceRequire, wantErrMsg: "operation not permitted"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sd := stateDir(t)
			if c.unsearched {
				private := filepath.Join(t.TempDir(), "private")
				require.NoError(t, os.Mkdir(private, 0o700))
				sd = filepath.Join(private, "state")
			}
			target := whoamiImage(t, f, bin, fmt.Sprintf("whoami:no-userns-%d", i), "")
			rec, err := recorder.RunAndRecord(f.ctx, f.store.ContentStore(), target, platforms.All,
				recorder.RunOptions{Period: 20 * time.Second, StateDir: sd, UserNamespace: c.mode, Runc: c.runc})
			assert.Empty(t, tornDown(t, sd, os.Getpid()), "the container and its state are gone")
			if c.wantErrMsg != "" {
				require.ErrorContains(t, err, c.wantErrMsg)
				return
			}
			if c.wantError != nil {
				require.ErrorIs(t, err, c.wantError)
				return
			}
			require.NoError(t, err)
			assert.ElementsMatch(t, []string{"uid-65534", "gid-65534", "userns-no", "seccomp-2", "nnp-1"}, recordedIDs(rec), "nobody still, in the host's user namespace")
		})
	}
}

// The helper process's environment (TestRunIsTornDownWhenTheProcessIsKilled).
const (
	helperStateDir   = "LAZYCONV_RECORDER_HELPER_STATE_DIR"
	helperStore      = "LAZYCONV_RECORDER_HELPER_STORE"
	helperBinary     = "LAZYCONV_RECORDER_HELPER_BINARY"
	helperNoWatchdog = "LAZYCONV_RECORDER_HELPER_NO_WATCHDOG"
)

// TestHelperRecordUntilKilled is the process that
// TestRunIsTornDownWhenTheProcessIsKilled kills while its workload runs.
func TestHelperRecordUntilKilled(t *testing.T) {
	sd := os.Getenv(helperStateDir)
	if sd == "" {
		t.Skip("the helper process of TestRunIsTornDownWhenTheProcessIsKilled")
	}
	if os.Getenv(helperNoWatchdog) != "" {
		defer recorder.WithoutWatchdog()()
	}
	ctx := namespaces.WithNamespace(context.Background(), "test")
	st, err := localstore.Open(ctx, os.Getenv(helperStore))
	require.NoError(t, err)
	f := &fixture{ctx: ctx, store: st}
	target := whoamiImage(t, f, os.Getenv(helperBinary), "whoami:sleeps", "")
	_, err = recorder.RunAndRecord(ctx, st.ContentStore(), target, platforms.All,
		recorder.RunOptions{Period: 2 * time.Minute, StateDir: sd, Args: []string{"/bin/whoami", "2m"}})
	t.Fatalf("the run was to be killed; it ended with %v", err)
}

func TestRunIsTornDownWhenTheProcessIsKilled(t *testing.T) {
	needRunc(t)
	bin := goBinary(t, whoami)
	cases := []struct {
		name     string
		watchdog bool
	}{
		{name: "by its watchdog", watchdog: true},
		{name: "by the next run, without a watchdog", watchdog: false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sd := stateDir(t)
			runcRoot := filepath.Join(sd, "runc")
			helper := exec.Command(os.Args[0], "-test.run=^TestHelperRecordUntilKilled$", "-test.v")
			helper.Env = append(os.Environ(), helperStateDir+"="+sd, helperStore+"="+t.TempDir(), helperBinary+"="+bin)
			if !c.watchdog {
				helper.Env = append(helper.Env, helperNoWatchdog+"=1")
			}
			var out bytes.Buffer
			helper.Stdout, helper.Stderr = &out, &out
			require.NoError(t, helper.Start())
			done := make(chan error, 1)
			go func() { done <- helper.Wait() }()

			var id string
			require.Eventually(t, func() bool {
				ids, _ := exec.Command("runc", "--root", runcRoot, "list", "-q").Output()
				id = strings.TrimSpace(string(ids))
				return id != "" && containerStatus(runcRoot, id) == "running"
			}, time.Minute, 100*time.Millisecond, "the helper's container never ran: %s", &out)
			assert.Equal(t, []string{"1024", "1073741824"}, cgroupLimits(t, id), "pids and memory limits")
			require.NoError(t, helper.Process.Kill())
			<-done

			if c.watchdog {
				require.Eventually(t, func() bool { return tornDown(t, sd, helper.Process.Pid) == "" }, 30*time.Second, 100*time.Millisecond,
					"left after the kill: %s", tornDown(t, sd, helper.Process.Pid))
				return
			}
			time.Sleep(time.Second)
			require.Equal(t, "running", containerStatus(runcRoot, id), "with no watchdog, the container outlives its process")
			f := layeredImage(t)
			target := whoamiImage(t, f, bin, "whoami:next", "")
			_, err := recorder.RunAndRecord(f.ctx, f.store.ContentStore(), target, platforms.All, recorder.RunOptions{Period: 20 * time.Second, StateDir: sd})
			require.NoError(t, err)
			assert.Empty(t, tornDown(t, sd, helper.Process.Pid), "the next run tore the leftover down")
			assert.Empty(t, tornDown(t, sd, os.Getpid()))
		})
	}
}

// cgroupLimits are the pids and memory limits of the container id's cgroup
// (v1 or v2).
func cgroupLimits(t *testing.T, id string) []string {
	t.Helper()
	read := func(patterns ...string) string {
		for _, p := range patterns {
			if b, err := os.ReadFile(p); err == nil {
				return strings.TrimSpace(string(b))
			}
		}
		return ""
	}
	cg := "lazyconv-recorder/" + id
	return []string{
		read("/sys/fs/cgroup/"+cg+"/pids.max", "/sys/fs/cgroup/pids/"+cg+"/pids.max"),
		read("/sys/fs/cgroup/"+cg+"/memory.max", "/sys/fs/cgroup/memory/"+cg+"/memory.limit_in_bytes"),
	}
}

// containerStatus is runc's status of the container id ("" if none).
func containerStatus(runcRoot, id string) string {
	out, err := exec.Command("runc", "--root", runcRoot, "state", id).Output()
	if err != nil {
		return ""
	}
	var st struct {
		Status string `json:"status"`
	}
	if json.Unmarshal(out, &st) != nil {
		return ""
	}
	return st.Status
}
