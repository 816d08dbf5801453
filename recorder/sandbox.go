package recorder

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// The sandbox's defaults (RunOptions).
const (
	// DefaultPidsLimit caps the workload's processes and threads.
	DefaultPidsLimit = 1024
	// DefaultMemoryLimit caps the workload's memory (swap included): 1 GiB.
	DefaultMemoryLimit = 1 << 30
	// DefaultTmpfsSize is the room the workload has to write: 256 MiB.
	DefaultTmpfsSize = 256 << 20
	// DefaultStateDir holds the runs' bundles and runc's state.
	DefaultStateDir = "/run/lazyconv/recorder"
	// NobodyID is the uid and gid the workload runs as when neither the
	// image nor the options name a user.
	NobodyID = 65534
)

// UserNamespaceMode says whether the workload runs in a user namespace.
type UserNamespaceMode string

const (
	// UserNamespaceAuto (the default) runs the workload in a user namespace
	// when the kernel and runc allow one, and without one otherwise, saying
	// so in a warning.
	UserNamespaceAuto UserNamespaceMode = ""
	// UserNamespaceRequire refuses to run the workload without a user
	// namespace.
	UserNamespaceRequire UserNamespaceMode = "require"
	// UserNamespaceOff runs the workload without a user namespace.
	UserNamespaceOff UserNamespaceMode = "off"
)

// ParseUserNamespaceMode reads "auto", "require" or "off".
func ParseUserNamespaceMode(s string) (UserNamespaceMode, error) {
	switch s {
	case "", "auto":
		return UserNamespaceAuto, nil
	case string(UserNamespaceRequire), string(UserNamespaceOff):
		return UserNamespaceMode(s), nil
	}
	return "", fmt.Errorf("user namespace mode %q: want auto, require or off: %w", s, errdefs.ErrInvalidArgument)
}

// cgroupParent is where the workloads' cgroups are made, below the root of
// each hierarchy: cgroupParent/ID.
const cgroupParent = "/lazyconv-recorder"

// sandboxCaps are the capabilities the workload keeps: containerd's default
// set without CAP_NET_RAW and CAP_MKNOD, which recording needs neither of.
// A workload that is not uid 0 loses them all at exec anyway.
var sandboxCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP",
	"CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// Host IDs for user namespaces are taken from the range that systemd sets
// aside for containers (524288…1879048191, 64 Ki-aligned blocks), leaving
// room for maxMappedIDs container IDs above the base.
const (
	hostIDFirst  = 0x00080000
	hostIDEnd    = 0x70000000
	idBlock      = 0x10000
	maxMappedIDs = 1 << 24
)

// pickHostIDBase chooses the host ID that container ID 0 maps to: a random
// 64 Ki block, so that concurrent runs rarely share IDs.
func pickHostIDBase() uint32 {
	blocks := (hostIDEnd - hostIDFirst - maxMappedIDs) / idBlock
	return uint32(hostIDFirst + rand.IntN(blocks)*idBlock)
}

// shiftOwner maps a file owner in the image to the host ID that the user
// namespace shows as that owner. IDs too large to map become the host ID of
// nobody (as the kernel shows unmapped IDs).
func shiftOwner(base uint32, id int) int {
	if id < 0 || id >= maxMappedIDs {
		id = NobodyID
	}
	return int(base) + id
}

// shiftOwners is an archive filter that makes unpacked files owned by what
// the user namespace based at base maps their owners to.
func shiftOwners(base uint32) func(*tar.Header) (bool, error) {
	return func(h *tar.Header) (bool, error) {
		h.Uid, h.Gid = shiftOwner(base, h.Uid), shiftOwner(base, h.Gid)
		return true, nil
	}
}

// sandbox is what the workload's runtime spec is built from.
type sandbox struct {
	id     string
	rootfs string // absolute: the user is resolved against its /etc files
	args   []string
	env    []string
	cwd    string
	// user is USER[:GROUP] as OCI image configs give it; empty runs the
	// workload as nobody (NobodyID:NobodyID).
	user string
	// userns, when set, is the host ID that container ID 0 maps to; the
	// workload then runs in a user namespace.
	userns *uint32
	// pids, memory and tmpfs are the limits; zero or less is none (tmpfs:
	// the mounts keep containerd's sizes).
	pids, memory, tmpfs int64
	// swap says that the memory limit covers swap too (where cgroups
	// account for it: runc fails on a swap limit otherwise).
	swap bool
}

// buildSpec builds the workload's runtime spec from containerd's default
// one: the user resolved against the root filesystem, no new privileges,
// reduced capabilities, containerd's default seccomp profile, pids and
// memory limits, sized tmpfs mounts, and a user namespace when asked.
func buildSpec(ctx context.Context, sb sandbox) (*specs.Spec, error) {
	if !filepath.IsAbs(sb.rootfs) {
		return nil, fmt.Errorf("root filesystem %q is not absolute: %w", sb.rootfs, errdefs.ErrInvalidArgument)
	}
	cwd := sb.cwd
	if cwd == "" {
		cwd = "/"
	}
	user := oci.WithUIDGID(NobodyID, NobodyID)
	if sb.user != "" {
		user = oci.Compose(oci.WithUser(sb.user), withImageGroups)
	}
	ctx = namespaces.WithNamespace(ctx, "lazyconv") // containerd's default spec wants one
	s, err := oci.GenerateSpecWithPlatform(ctx, nil, "linux", &containers.Container{ID: sb.id},
		oci.WithRootFSPath(sb.rootfs),
		oci.WithProcessArgs(sb.args...),
		oci.WithProcessCwd(cwd),
		oci.WithHostname("lazyconv-record"),
		oci.WithNoNewPrivileges,
		oci.WithCapabilities(sandboxCaps),
		oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.CgroupNamespace}),
	)
	if err != nil {
		return nil, err
	}
	if err := user(ctx, nil, &containers.Container{ID: sb.id}, s); err != nil {
		return nil, fmt.Errorf("the workload's user %q: %v: %w", sb.user, err, errdefs.ErrInvalidArgument)
	}
	s.Process.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, sb.env...)
	s.Linux.CgroupsPath = cgroupParent + "/" + sb.id
	if sb.pids > 0 {
		s.Linux.Resources.Pids = &specs.LinuxPids{Limit: &sb.pids}
	}
	if sb.memory > 0 {
		limit := sb.memory
		s.Linux.Resources.Memory = &specs.LinuxMemory{Limit: &limit}
		if sb.swap {
			// Memory and swap together: the workload gets no swap on top.
			swap := sb.memory
			s.Linux.Resources.Memory.Swap = &swap
		}
	}
	if sb.tmpfs > 0 {
		for i, m := range s.Mounts {
			if m.Type == "tmpfs" {
				s.Mounts[i].Options = withTmpfsSize(m.Options, sb.tmpfs)
			}
		}
	}
	if sb.userns != nil {
		size, err := mappedIDs(s.Process.User)
		if err != nil {
			return nil, err
		}
		m := []specs.LinuxIDMapping{{ContainerID: 0, HostID: *sb.userns, Size: size}}
		if err := oci.WithUserNamespace(m, m)(ctx, nil, nil, s); err != nil {
			return nil, err
		}
	}
	// Last: the profile allows what the capabilities need.
	s.Linux.Seccomp = seccomp.DefaultProfile(s)
	return s, nil
}

// withImageGroups adds the supplementary groups the image's /etc/group
// gives the workload's user, as containerd does for an image's USER.
func withImageGroups(ctx context.Context, client oci.Client, c *containers.Container, s *oci.Spec) error {
	return oci.WithAdditionalGIDs(strconv.FormatUint(uint64(s.Process.User.UID), 10))(ctx, client, c, s)
}

// mappedIDs is how many IDs from 0 the user namespace maps: 64 Ki, or more
// to reach the workload's own IDs (in 64 Ki blocks).
func mappedIDs(u specs.User) (uint32, error) {
	top := max(u.UID, u.GID)
	for _, g := range u.AdditionalGids {
		top = max(top, g)
	}
	if top >= maxMappedIDs {
		return 0, fmt.Errorf("the workload's IDs reach %d, beyond the %d a user namespace maps: %w", top, maxMappedIDs, errUserNamespaceUnfit)
	}
	return (top/idBlock + 1) * idBlock, nil
}

// errUserNamespaceUnfit says that this workload cannot run in the user
// namespace the recorder makes.
var errUserNamespaceUnfit = errors.New("user namespace unfit for the workload")

// withTmpfsSize sets a tmpfs mount's size= option to at most size bytes.
func withTmpfsSize(opts []string, size int64) []string {
	out := make([]string, 0, len(opts)+1)
	found := false
	for _, o := range opts {
		if v, ok := strings.CutPrefix(o, "size="); ok {
			found = true
			if n, err := parseTmpfsSize(v); err == nil && n <= size {
				out = append(out, o)
				continue
			}
			o = "size=" + strconv.FormatInt(size, 10)
		}
		out = append(out, o)
	}
	if !found {
		out = append(out, "size="+strconv.FormatInt(size, 10))
	}
	return out
}

// parseTmpfsSize reads a tmpfs size= value in bytes (k, m, g suffixes);
// percentages are refused.
func parseTmpfsSize(v string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(v, "k"), strings.HasSuffix(v, "K"):
		mult = 1 << 10
	case strings.HasSuffix(v, "m"), strings.HasSuffix(v, "M"):
		mult = 1 << 20
	case strings.HasSuffix(v, "g"), strings.HasSuffix(v, "G"):
		mult = 1 << 30
	}
	if mult != 1 {
		v = v[:len(v)-1]
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("tmpfs size %q: %w", v, errdefs.ErrInvalidArgument)
	}
	return n * mult, nil
}

// swapAccounted says whether cgroups here account for swap: cgroup v1's
// memory hierarchy has memory.memsw.* files, cgroup v2 with the memory
// controller does unless booted with swapaccount=0.
func swapAccounted() bool {
	for _, mnt := range cgroupMounts() {
		if _, err := os.Stat(filepath.Join(mnt, "memory.memsw.limit_in_bytes")); err == nil {
			return true
		}
		if b, err := os.ReadFile(filepath.Join(mnt, "cgroup.controllers")); err == nil && slices.Contains(strings.Fields(string(b)), "memory") {
			cmdline, _ := os.ReadFile("/proc/cmdline")
			return !slices.Contains(strings.Fields(string(cmdline)), "swapaccount=0")
		}
	}
	return false
}

// swapInUse says whether the host has swap space.
func swapInUse() bool {
	b, err := os.ReadFile("/proc/swaps")
	return err == nil && len(strings.Split(strings.TrimSpace(string(b)), "\n")) > 1
}

// probeUserNamespace says why this process cannot make a user namespace, or
// nil if it can: it starts runc --version in a new one, mapped to nobody.
func probeUserNamespace(runc string) error {
	if b, err := os.ReadFile("/proc/sys/user/max_user_namespaces"); err == nil && strings.TrimSpace(string(b)) == "0" {
		return errors.New("/proc/sys/user/max_user_namespaces is 0")
	}
	cmd := exec.Command(runc, "--version")
	one := []syscall.SysProcIDMap{{ContainerID: 0, HostID: NobodyID, Size: 1}}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWUSER, UidMappings: one, GidMappings: one, Pdeathsig: unix.SIGKILL}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := runLocked(cmd); err != nil {
		return fmt.Errorf("unshare(CLONE_NEWUSER): %v %s", err, strings.TrimSpace(out.String()))
	}
	return nil
}

// searchableByOthers says which directory above p (p included) other users
// cannot enter: a user namespace's root is another user to the host, and
// runc's init, inside the namespace, must reach the root filesystem.
func searchableByOthers(p string) error {
	for d := p; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%s (mode %v) is not searchable by other users", d, fi.Mode().Perm())
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}
