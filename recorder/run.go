package recorder

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// RunOptions configures RunAndRecord.
type RunOptions struct {
	// Period is how long the workload may run (default 10 s); it is killed then.
	Period time.Duration
	// Args replaces the image's entrypoint and command when set.
	Args []string
	// Env is added to the image's environment (K=V).
	Env []string
	// Runc is the runc binary (default: runc on PATH).
	Runc string

	// User runs the workload as USER[:GROUP] (names resolved against the
	// image's /etc/passwd and /etc/group) instead of the image config's
	// User. With neither, the workload runs as NobodyID:NobodyID.
	User string
	// UserNamespace says whether the workload runs in a user namespace
	// (default UserNamespaceAuto: when this kernel and runc allow one).
	UserNamespace UserNamespaceMode
	// PidsLimit caps the workload's processes and threads (default
	// DefaultPidsLimit; negative: no limit).
	PidsLimit int64
	// MemoryLimit caps the workload's memory, swap included, in bytes
	// (default DefaultMemoryLimit; negative: no limit).
	MemoryLimit int64
	// TmpfsSize is the room, in bytes, the workload has to write (default
	// DefaultTmpfsSize; negative: no limit): the root filesystem's tmpfs
	// holds the unpacked image and TmpfsSize more, and the container's own
	// tmpfs mounts (/dev, /dev/shm, /run) are at most TmpfsSize each.
	TmpfsSize int64
	// StateDir holds the runs' bundles and runc's state (default
	// DefaultStateDir). A run first tears down what the runs of processes
	// that died left there.
	StateDir string
}

// withDefaults fills in the options' defaults.
func (o RunOptions) withDefaults() (RunOptions, error) {
	if o.Period <= 0 {
		o.Period = 10 * time.Second
	}
	if o.Runc == "" {
		p, err := exec.LookPath("runc")
		if err != nil {
			return o, fmt.Errorf("recording a workload needs runc on PATH: %w", errdefs.ErrUnavailable)
		}
		o.Runc = p
	}
	for _, l := range []struct {
		v   *int64
		def int64
	}{{&o.PidsLimit, DefaultPidsLimit}, {&o.MemoryLimit, DefaultMemoryLimit}, {&o.TmpfsSize, DefaultTmpfsSize}} {
		if *l.v == 0 {
			*l.v = l.def
		}
	}
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	if !filepath.IsAbs(o.StateDir) {
		return o, fmt.Errorf("state dir %q is not absolute: %w", o.StateDir, errdefs.ErrInvalidArgument)
	}
	if _, err := ParseUserNamespaceMode(string(o.UserNamespace)); err != nil {
		return o, err
	}
	return o, nil
}

// RunAndRecord runs the image's entrypoint with runc on a root filesystem
// unpacked from its layers, watches that filesystem with fanotify (as
// ctr-remote's analyzer does), and records every file the workload opens. It
// needs root. Files that are in no layer (made at run time) are not recorded.
//
// The workload is sandboxed: it runs as the image's user (nobody if the
// image names none), in a user namespace where the kernel allows one, with
// no new privileges, fewer capabilities than containerd's default set,
// containerd's default seccomp profile, pids and memory limits and sized
// tmpfs mounts (see RunOptions). Its container is killed and deleted
// whichever way the run ends; if this process is killed, a watchdog process
// (/bin/sh) does it, and failing that the next run.
func RunAndRecord(ctx context.Context, cs content.Store, target ocispec.Descriptor, platform platforms.MatchComparer, opts RunOptions) (*Recorder, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	ix, err := BuildIndex(ctx, cs, target, platform)
	if err != nil {
		return nil, err
	}
	mdesc, err := manifestDescriptor(ctx, cs, target, platform)
	if err != nil {
		return nil, err
	}
	m, err := images.Manifest(ctx, cs, mdesc, platform)
	if err != nil {
		return nil, err
	}
	var cfg ocispec.Image
	if b, err := content.ReadBlob(ctx, cs, m.Config); err != nil {
		return nil, err
	} else if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, fmt.Errorf("image config: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	args := opts.Args
	if len(args) == 0 {
		args = append(append([]string{}, cfg.Config.Entrypoint...), cfg.Config.Cmd...)
	}
	if len(args) == 0 {
		return nil, fmt.Errorf("the image has no entrypoint or command; pass args: %w", errdefs.ErrInvalidArgument)
	}
	user := opts.User
	if user == "" {
		user = cfg.Config.User
	}

	if err := os.MkdirAll(opts.StateDir, 0o711); err != nil {
		return nil, err
	}
	rc := runcCLI{bin: opts.Runc, root: filepath.Join(opts.StateDir, "runc")}
	cleanLeftovers(ctx, opts.StateDir, rc)
	id := runIDPrefix + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	st, err := newRun(opts.StateDir, id, rc)
	if err != nil {
		return nil, err
	}
	wd, err := newWatchdog(st)
	if err != nil {
		log.G(ctx).WithError(err).Warnf("recorder: no watchdog: if this process is killed, the next run tears %s down", id)
	}
	defer func() {
		if err := st.teardown(); err != nil {
			log.G(ctx).WithError(err).Warnf("recorder: tearing down %s (the next run retries)", id)
		}
		wd.done()
		st.release()
	}()

	userns, err := userNamespaceWanted(ctx, opts, st)
	if err != nil {
		return nil, err
	}
	swap := swapAccounted()
	if !swap && opts.MemoryLimit > 0 && swapInUse() {
		log.G(ctx).Warn("recorder: cgroups here do not account for swap: the workload's memory limit does not bound its swap")
	}
	// The container's stdio is a file, not a pipe: a pipe would stay open
	// in the container and keep runc create from returning.
	logPath := filepath.Join(st.dir(), "workload.log")
	runc := func(args ...string) error {
		logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		defer logf.Close()
		cmd := rc.command(ctx, args...)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := runLocked(cmd); err != nil {
			out, _ := os.ReadFile(logPath)
			return fmt.Errorf("runc %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
		}
		return nil
	}
	for {
		var base *uint32
		if userns {
			b := pickHostIDBase()
			base = &b
		}
		if err := prepareRootfs(ctx, cs, m.Layers, st.rootfs(), ix.unpackedBytes(), opts.TmpfsSize, base); err != nil {
			return nil, err
		}
		spec, err := buildSpec(ctx, sandbox{
			id: id, rootfs: st.rootfs(), args: args, env: append(cfg.Config.Env, opts.Env...), cwd: cfg.Config.WorkingDir,
			user: user, userns: base, pids: opts.PidsLimit, memory: opts.MemoryLimit, swap: swap, tmpfs: opts.TmpfsSize,
		})
		if errors.Is(err, errUserNamespaceUnfit) && opts.UserNamespace == UserNamespaceAuto {
			log.G(ctx).WithError(err).Warn("recorder: running the workload without a user namespace")
			userns = false
			if err := st.unmountRootfs(); err != nil {
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		if err := writeSpec(st.dir(), spec); err != nil {
			return nil, err
		}
		err = runc("create", "--bundle", st.dir(), id)
		if err == nil {
			break
		}
		if !userns || opts.UserNamespace != UserNamespaceAuto {
			return nil, explainCreate(err)
		}
		log.G(ctx).WithError(err).Warn("recorder: runc could not create the container in a user namespace; trying without one")
		userns = false
		if _, err := rc.output(context.Background(), "delete", "--force", id); err != nil && !strings.Contains(err.Error(), "does not exist") {
			return nil, err
		}
		if err := st.unmountRootfs(); err != nil {
			return nil, err
		}
		_ = os.Remove(logPath) // the next attempt's errors are its own
	}
	w, err := watch(st.rootfs())
	if err != nil {
		return nil, err
	}
	defer w.stop()
	w.start() // what runc did to set up the container is not the workload's
	if err := runc("start", id); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(opts.Period)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		out, err := rc.output(context.Background(), "state", id)
		if err != nil || bytes.Contains(out, []byte(`"status": "stopped"`)) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, _ = rc.output(context.Background(), "kill", id, "KILL")
	w.stop() // reads what is queued, then stops
	rec := New(ix)
	for _, p := range w.paths() {
		_ = rec.Record(p) // files made at run time are in no layer
	}
	return rec, nil
}

// userNamespaceWanted says whether to try a user namespace, warning when
// UserNamespaceAuto runs without one.
func userNamespaceWanted(ctx context.Context, opts RunOptions, st *runState) (bool, error) {
	if opts.UserNamespace == UserNamespaceOff {
		return false, nil
	}
	err := probeUserNamespace(opts.Runc)
	if err == nil {
		err = searchableByOthers(st.dir())
	}
	if err == nil {
		return true, nil
	}
	if opts.UserNamespace == UserNamespaceRequire {
		return false, fmt.Errorf("a user namespace was required: %v: %w", err, errdefs.ErrUnavailable)
	}
	log.G(ctx).WithError(err).Warn("recorder: running the workload without a user namespace")
	return false, nil
}

// explainCreate adds to runc create's error what a cgroup failure means.
func explainCreate(err error) error {
	if strings.Contains(err.Error(), "cgroup") {
		return fmt.Errorf("%w: runc needs writable cgroup hierarchies for the sandbox's limits "+
			"(a limit whose controller is missing can be turned off: PidsLimit or MemoryLimit -1): %w", err, errdefs.ErrUnavailable)
	}
	return err
}

// prepareRootfs mounts a tmpfs of its own on rootfs, sized to hold the
// image (need bytes, from the index) and room more, and unpacks the layers
// on it; with base, files are owned by the host IDs their owners map to in
// the user namespace based there. Directories the layers do not hold but
// need are made by the host's root, and so owned by nobody in a namespace.
func prepareRootfs(ctx context.Context, cs content.Store, layers []ocispec.Descriptor, rootfs string, need, room int64, base *uint32) error {
	// The root filesystem gets a filesystem of its own, so that fanotify can
	// watch all of it (runc mounts it again in the container's namespace,
	// which a mount mark would miss) and nothing else.
	data := "mode=0755"
	if room > 0 {
		data += ",size=" + strconv.FormatInt(need+room, 10)
	}
	var aopts []archive.ApplyOpt
	if base != nil {
		data += fmt.Sprintf(",uid=%d,gid=%d", *base, *base)
		aopts = append(aopts, archive.WithFilter(shiftOwners(*base)))
	}
	if err := unix.Mount("tmpfs", rootfs, "tmpfs", 0, data); err != nil {
		return fmt.Errorf("mounting the root filesystem (needs root): %w", err)
	}
	for _, l := range layers {
		if err := applyLayer(ctx, cs, l, rootfs, aopts...); err != nil {
			if errors.Is(err, unix.ENOSPC) {
				return fmt.Errorf("unpacking layer %s: %w (the root filesystem holds %d bytes: the image's and TmpfsSize)", l.Digest, err, need+room)
			}
			return fmt.Errorf("unpacking layer %s: %w", l.Digest, err)
		}
	}
	return nil
}

func applyLayer(ctx context.Context, cs content.Store, desc ocispec.Descriptor, root string, opts ...archive.ApplyOpt) error {
	ra, err := cs.ReaderAt(ctx, desc)
	if err != nil {
		return err
	}
	defer ra.Close()
	r, err := compression.DecompressStream(io.NewSectionReader(ra, 0, ra.Size()))
	if err != nil {
		return err
	}
	defer r.Close()
	_, err = archive.Apply(ctx, root, r, opts...)
	return err
}

// writeSpec writes the bundle's config.json.
func writeSpec(bundle string, spec *specs.Spec) error {
	b, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o600)
}

// watcher collects the files opened on one mount.
type watcher struct {
	fd      int
	root    string
	mu      sync.Mutex
	started bool
	seen    map[string]bool
	order   []string
	quit    chan struct{}
	done    chan struct{}
	once    sync.Once
}

func watch(root string) (*watcher, error) {
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_NOTIF|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK, unix.O_RDONLY|unix.O_LARGEFILE|unix.O_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("fanotify (needs root): %w", err)
	}
	if err := unix.FanotifyMark(fd, unix.FAN_MARK_ADD|unix.FAN_MARK_FILESYSTEM, unix.FAN_OPEN|unix.FAN_ACCESS|unix.FAN_OPEN_EXEC, unix.AT_FDCWD, root); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("fanotify mark: %w", err)
	}
	w := &watcher{fd: fd, root: root, seen: map[string]bool{}, quit: make(chan struct{}), done: make(chan struct{})}
	go w.read()
	return w, nil
}

func (w *watcher) start() {
	w.mu.Lock()
	w.started = true
	w.mu.Unlock()
}

func (w *watcher) read() {
	defer close(w.done)
	buf := make([]byte, 64<<10)
	const metaLen = int(unsafeSizeofMetadata)
	for {
		n, err := unix.Read(w.fd, buf)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			select {
			case <-w.quit:
				return // nothing queued any more
			default:
			}
			fds := []unix.PollFd{{Fd: int32(w.fd), Events: unix.POLLIN}}
			_, _ = unix.Poll(fds, 50)
			continue
		}
		if err != nil {
			return
		}
		for off := 0; off+metaLen <= n; {
			var meta unix.FanotifyEventMetadata
			if err := binary.Read(bytes.NewReader(buf[off:off+metaLen]), binary.NativeEndian, &meta); err != nil || meta.Event_len == 0 {
				break
			}
			if meta.Fd >= 0 {
				if p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(meta.Fd))); err == nil {
					w.note(p)
				}
				unix.Close(int(meta.Fd))
			}
			off += int(meta.Event_len)
		}
	}
}

// note records an opened file. Seen through our mount it is under root;
// seen through the container's own mount of the same filesystem, the kernel
// names it from that filesystem's root.
func (w *watcher) note(p string) {
	rel, ok := strings.CutPrefix(p, w.root+"/")
	if !ok {
		rel = strings.TrimPrefix(p, "/")
	}
	if rel == "" || strings.HasSuffix(rel, " (deleted)") {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.started && !w.seen[rel] {
		w.seen[rel] = true
		w.order = append(w.order, rel)
	}
}

func (w *watcher) paths() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.order...)
}

// stop reads the events still queued, then stops watching.
func (w *watcher) stop() {
	w.once.Do(func() {
		close(w.quit)
		<-w.done
		unix.Close(w.fd)
	})
}

// unsafeSizeofMetadata is sizeof(struct fanotify_event_metadata): event_len
// (4), vers, reserved (1+1), metadata_len (2), mask (8), fd (4), pid (4).
const unsafeSizeofMetadata = 24
