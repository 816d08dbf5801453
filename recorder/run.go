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
	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
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
}

// RunAndRecord runs the image's entrypoint with runc on a root filesystem
// unpacked from its layers, watches that filesystem with fanotify (as
// ctr-remote's analyzer does), and records every file the workload opens. It
// needs root. Files that are in no layer (made at run time) are not recorded.
func RunAndRecord(ctx context.Context, cs content.Store, target ocispec.Descriptor, platform platforms.MatchComparer, opts RunOptions) (*Recorder, error) {
	if opts.Period <= 0 {
		opts.Period = 10 * time.Second
	}
	if opts.Runc == "" {
		p, err := exec.LookPath("runc")
		if err != nil {
			return nil, fmt.Errorf("recording a workload needs runc on PATH: %w", errdefs.ErrUnavailable)
		}
		opts.Runc = p
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

	bundle, err := os.MkdirTemp("", "lazyconv-run-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(bundle)
	rootfs := filepath.Join(bundle, "rootfs")
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		return nil, err
	}
	// The root filesystem gets a filesystem of its own, so that fanotify can
	// watch all of it (runc mounts it again in the container's namespace,
	// which a mount mark would miss) and nothing else.
	if err := unix.Mount("tmpfs", rootfs, "tmpfs", 0, "mode=0755"); err != nil {
		return nil, fmt.Errorf("mounting the root filesystem (needs root): %w", err)
	}
	defer unix.Unmount(rootfs, unix.MNT_DETACH) //nolint:errcheck // best effort
	for _, l := range m.Layers {
		if err := applyLayer(ctx, cs, l, rootfs); err != nil {
			return nil, fmt.Errorf("unpacking layer %s: %w", l.Digest, err)
		}
	}

	if err := writeSpec(ctx, opts.Runc, bundle, args, append(cfg.Config.Env, opts.Env...), cfg.Config.WorkingDir); err != nil {
		return nil, err
	}
	w, err := watch(rootfs)
	if err != nil {
		return nil, err
	}
	defer w.stop()

	id := "lazyconv-record-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	// The container's stdio is a file, not a pipe: a pipe would stay open
	// in the container and keep runc create from returning.
	logPath := filepath.Join(bundle, "workload.log")
	runc := func(args ...string) error {
		logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		defer logf.Close()
		cmd := exec.CommandContext(ctx, opts.Runc, args...)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Run(); err != nil {
			out, _ := os.ReadFile(logPath)
			return fmt.Errorf("runc %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
		}
		return nil
	}
	if err := runc("create", "--bundle", bundle, id); err != nil {
		return nil, err
	}
	defer exec.Command(opts.Runc, "delete", "--force", id).Run() //nolint:errcheck // best effort
	w.start()                                                    // what runc did to set up the container is not the workload's
	if err := runc("start", id); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(opts.Period)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		out, err := exec.Command(opts.Runc, "state", id).Output()
		if err != nil || bytes.Contains(out, []byte(`"status": "stopped"`)) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = exec.Command(opts.Runc, "kill", id, "KILL").Run()
	w.stop() // reads what is queued, then stops
	rec := New(ix)
	for _, p := range w.paths() {
		_ = rec.Record(p) // files made at run time are in no layer
	}
	return rec, nil
}

func applyLayer(ctx context.Context, cs content.Store, desc ocispec.Descriptor, root string) error {
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
	_, err = archive.Apply(ctx, root, r)
	return err
}

// writeSpec writes runc's default spec for the bundle, with the workload's
// process.
func writeSpec(ctx context.Context, runc, bundle string, args, env []string, cwd string) error {
	if out, err := exec.CommandContext(ctx, runc, "spec", "--bundle", bundle).CombinedOutput(); err != nil {
		return fmt.Errorf("runc spec: %v: %s", err, out)
	}
	p := filepath.Join(bundle, "config.json")
	b, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	var spec map[string]any
	if err := json.Unmarshal(b, &spec); err != nil {
		return err
	}
	if cwd == "" {
		cwd = "/"
	}
	process := spec["process"].(map[string]any)
	process["args"] = args
	process["terminal"] = false
	process["cwd"] = cwd
	process["env"] = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, env...)
	spec["root"] = map[string]any{"path": "rootfs", "readonly": false}
	if b, err = json.Marshal(spec); err != nil {
		return err
	}
	return os.WriteFile(p, b, 0o644)
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
