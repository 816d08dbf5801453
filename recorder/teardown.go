package recorder

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// A run lives in the state dir as ID.lock (flocked while the run's process
// lives), ID/ (the bundle: config.json, rootfs/ with its tmpfs, the
// workload's log) and runc/ID (runc's state, runc --root being runc/), and
// in every cgroup hierarchy as cgroupParent/ID. Each run first tears down
// what runs that died left there: the lock of a dead process is free.

// runIDPrefix starts the IDs of the recorder's runs (and containers).
const runIDPrefix = "lazyconv-record-"

// runcCLI runs runc with the recorder's state root.
type runcCLI struct {
	bin, root string
}

// command is runc with args; it is killed if this process dies.
func (r runcCLI) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, r.bin, append([]string{"--root", r.root}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: unix.SIGKILL}
	return cmd
}

// output runs runc with args and returns its standard output.
func (r runcCLI) output(ctx context.Context, args ...string) ([]byte, error) {
	var out, stderr bytes.Buffer
	cmd := r.command(ctx, args...)
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := runLocked(cmd); err != nil {
		return out.Bytes(), fmt.Errorf("runc %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out.Bytes(), nil
}

// runLocked runs cmd from a locked OS thread: a parent-death signal fires
// when the thread that started the child ends, and the Go runtime may end
// an idle thread, but not one that is locked.
func runLocked(cmd *exec.Cmd) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return cmd.Run()
}

// runState is one run's share of the state dir.
type runState struct {
	stateDir, id string
	runc         runcCLI
	lock         *os.File
}

func (r *runState) dir() string      { return filepath.Join(r.stateDir, r.id) }
func (r *runState) rootfs() string   { return filepath.Join(r.dir(), "rootfs") }
func (r *runState) lockPath() string { return lockPath(r.stateDir, r.id) }

func lockPath(stateDir, id string) string { return filepath.Join(stateDir, id+".lock") }

// newRun takes id's lock and makes its bundle directory, searchable by
// others (a user namespace's root is another user to the host).
func newRun(stateDir, id string, rc runcCLI) (*runState, error) {
	f, err := lockRun(stateDir, id)
	if err != nil {
		return nil, err
	}
	if f == nil {
		return nil, fmt.Errorf("run %s is locked by another process", id)
	}
	r := &runState{stateDir: stateDir, id: id, runc: rc, lock: f}
	if err := os.Mkdir(r.dir(), 0o711); err != nil {
		r.release()
		return nil, err
	}
	if err := os.Chmod(r.dir(), 0o711); err != nil { // whatever the umask
		r.release()
		return nil, err
	}
	if err := os.Mkdir(r.rootfs(), 0o755); err != nil {
		r.release()
		return nil, err
	}
	return r, nil
}

// lockRun takes id's lock, or returns nil if a live process holds it.
func lockRun(stateDir, id string) (*os.File, error) {
	p := lockPath(stateDir, id)
	for {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			return nil, err
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, nil
			}
			return nil, fmt.Errorf("locking %s: %w", p, err)
		}
		// Whoever held the lock last may have removed the file meanwhile:
		// the lock is ours only if it is on the file the path names.
		var held, named unix.Stat_t
		if unix.Fstat(int(f.Fd()), &held) == nil && unix.Stat(p, &named) == nil && held.Dev == named.Dev && held.Ino == named.Ino {
			return f, nil
		}
		f.Close()
	}
}

// release removes the lock file and lets the lock go.
func (r *runState) release() {
	_ = os.Remove(r.lockPath())
	r.lock.Close()
}

// unmountRootfs unmounts the root filesystem's tmpfs (all of them, should
// one be mounted over another).
func (r *runState) unmountRootfs() error {
	for {
		err := unix.Unmount(r.rootfs(), unix.MNT_DETACH)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil // not a mount point (any more)
		}
		if err != nil {
			return fmt.Errorf("unmounting %s: %w", r.rootfs(), err)
		}
	}
}

// teardown removes whatever of the run exists: the container (killed),
// the root filesystem's mount, the bundle, the cgroups. It can run again.
func (r *runState) teardown() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	if _, err := os.Stat(filepath.Join(r.runc.root, r.id)); err == nil {
		if _, err := r.runc.output(ctx, "delete", "--force", r.id); err != nil {
			errs = append(errs, err)
		}
	}
	if err := r.unmountRootfs(); err != nil {
		errs = append(errs, err)
	} else if err := os.RemoveAll(r.dir()); err != nil {
		errs = append(errs, err)
	}
	if err := removeCgroups(r.id); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// cleanLeftovers tears down the runs in stateDir whose process died (their
// lock is free) without doing it themselves, e.g. when SIGKILLed.
func cleanLeftovers(ctx context.Context, stateDir string, rc runcCLI) {
	ids := map[string]bool{}
	for _, dir := range []string{stateDir, rc.root} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if id := strings.TrimSuffix(e.Name(), ".lock"); strings.HasPrefix(id, runIDPrefix) {
				ids[id] = true
			}
		}
	}
	for id := range ids {
		f, err := lockRun(stateDir, id)
		if err != nil {
			log.G(ctx).WithError(err).Warnf("recorder: cannot check the leftover run %s", id)
			continue
		}
		if f == nil {
			continue // running
		}
		r := &runState{stateDir: stateDir, id: id, runc: rc, lock: f}
		if err := r.teardown(); err != nil {
			log.G(ctx).WithError(err).Warnf("recorder: tearing down the leftover run %s", id)
		} else {
			log.G(ctx).Infof("recorder: tore down the leftover run %s", id)
		}
		r.release()
	}
}

// removeCgroups removes id's cgroup from every hierarchy, killing what is
// still in it (runc's delete does it; this is for runs that died before).
func removeCgroups(id string) error {
	var errs []error
	for _, mnt := range cgroupMounts() {
		d := filepath.Join(mnt, cgroupParent, id)
		if _, err := os.Stat(d); err != nil {
			continue
		}
		var err error
		for range 20 {
			if b, rerr := os.ReadFile(filepath.Join(d, "cgroup.procs")); rerr == nil {
				for _, f := range strings.Fields(string(b)) {
					if pid, perr := strconv.Atoi(f); perr == nil && pid > 0 {
						_ = unix.Kill(pid, unix.SIGKILL)
					}
				}
			}
			if err = unix.Rmdir(d); err == nil || errors.Is(err, unix.ENOENT) {
				err = nil
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("removing cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// cgroupMounts are the mount points of the cgroup hierarchies (v1 and v2).
func cgroupMounts() []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var mnts []string
	for _, line := range strings.Split(string(b), "\n") {
		// ID parent major:minor root mountpoint options [optional...] - fstype source super-options
		fields := strings.Fields(line)
		for i, f := range fields {
			if f == "-" && i+1 < len(fields) && i >= 5 {
				if fields[i+1] == "cgroup" || fields[i+1] == "cgroup2" {
					mnts = append(mnts, fields[4])
				}
				break
			}
		}
	}
	return mnts
}

// watchdogScript tears a run down when this process dies: its standard
// input is a pipe that only this process writes to, so it reads "done" when
// the run tore itself down, and end of file when this process died.
// $0 is runc, $1 runc's root, $2 the ID, $3 the root filesystem, $4 the
// bundle and $5 the lock file.
const watchdogScript = `trap '' HUP INT TERM
read -r line
[ "$line" = done ] && exit 0
"$0" --root "$1" delete --force "$2" >/dev/null 2>&1
umount -l "$3" >/dev/null 2>&1
rm -rf "$4" "$5"
`

// watchdog is a process that tears the run down if this one dies first.
type watchdog struct {
	cmd  *exec.Cmd
	pipe *os.File
}

// newWatchdog starts a run's watchdog (tests replace it).
var newWatchdog = startWatchdog

// startWatchdog starts the run's watchdog: /bin/sh, in a session of its
// own, so that neither the terminal's signals nor this process's death end
// it.
func startWatchdog(r *runState) (*watchdog, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer pr.Close()
	cmd := exec.Command("/bin/sh", "-c", watchdogScript, r.runc.bin, r.runc.root, r.id, r.rootfs(), r.dir(), r.lockPath())
	cmd.Stdin = pr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		pw.Close()
		return nil, err
	}
	return &watchdog{cmd: cmd, pipe: pw}, nil
}

// done tells the watchdog that the run is torn down, and waits for it.
func (w *watchdog) done() {
	if w == nil {
		return
	}
	_, _ = w.pipe.WriteString("done\n")
	w.pipe.Close()
	_ = w.cmd.Wait()
}
