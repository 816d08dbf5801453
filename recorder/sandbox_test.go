package recorder

import (
	"archive/tar"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lazyconv/lazyconv/internal/imagegen"
	"github.com/lazyconv/lazyconv/localstore"
)

const (
	testPasswd = "root:x:0:0:root:/root:/bin/sh\napp:x:1234:2345::/home/app:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
	testGroup  = "root:x:0:\napp:x:2345:\nstaff:x:50:app\nbig:x:70000:app\n"
)

// specRootfs is a root filesystem with just /etc/passwd and /etc/group.
func specRootfs(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(root, "etc"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(root, "etc/passwd"), []byte(testPasswd), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(root, "etc/group"), []byte(testGroup), 0o644))
	return root
}

func TestBuildSpecSandboxesTheWorkload(t *testing.T) {
	base := uint32(0x100000)
	cases := []struct {
		name      string
		user      string
		userns    bool
		uid, gid  uint32
		gids      []uint32
		mapped    uint32 // IDs the user namespace maps
		wantError error
	}{
		{name: "no user runs as nobody", uid: NobodyID, gid: NobodyID, gids: []uint32{NobodyID}},
		{name: "no user, user namespace", userns: true, uid: NobodyID, gid: NobodyID, gids: []uint32{NobodyID}, mapped: 0x10000},
		{name: "uid:gid", user: "1000:1001", uid: 1000, gid: 1001, gids: []uint32{1001}},
		{name: "uid in passwd", user: "1234", userns: true, uid: 1234, gid: 2345, gids: []uint32{2345, 50, 70000}, mapped: 0x20000},
		{name: "name from passwd, supplementary groups from group", user: "app", userns: true, uid: 1234, gid: 2345, gids: []uint32{2345, 50, 70000}, mapped: 0x20000},
		{name: "name:group", user: "app:staff", uid: 1234, gid: 50, gids: []uint32{50, 70000}},
		{name: "root when the image says so", user: "root", userns: true, uid: 0, gid: 0, gids: []uint32{0}, mapped: 0x10000},
		{name: "uid 0", user: "0", uid: 0, gid: 0, gids: []uint32{0}},
		{name: "unknown name", user: "nosuch", wantError: errdefs.ErrInvalidArgument},
		{name: "IDs beyond what a namespace maps", user: "20000000:20000000", userns: true, wantError: errUserNamespaceUnfit},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := specRootfs(t)
			sb := sandbox{id: "lazyconv-record-1-x", rootfs: root, args: []string{"/bin/app", "-v"}, env: []string{"A=1"}, cwd: "/work",
				user: c.user, pids: DefaultPidsLimit, memory: DefaultMemoryLimit, swap: true, tmpfs: 1 << 20}
			if c.userns {
				sb.userns = &base
			}
			s, err := buildSpec(context.Background(), sb)
			if c.wantError != nil {
				require.ErrorIs(t, err, c.wantError)
				return
			}
			require.NoError(t, err)

			assert.Equal(t, c.uid, s.Process.User.UID, "uid")
			assert.Equal(t, c.gid, s.Process.User.GID, "gid")
			assert.ElementsMatch(t, c.gids, s.Process.User.AdditionalGids, "supplementary groups")
			assert.Equal(t, []string{"/bin/app", "-v"}, s.Process.Args)
			assert.Equal(t, "/work", s.Process.Cwd)
			assert.Contains(t, s.Process.Env, "A=1")
			assert.Equal(t, root, s.Root.Path)
			assert.False(t, s.Process.Terminal)

			var nsTypes []specs.LinuxNamespaceType
			for _, ns := range s.Linux.Namespaces {
				nsTypes = append(nsTypes, ns.Type)
			}
			for _, want := range []specs.LinuxNamespaceType{specs.PIDNamespace, specs.MountNamespace, specs.NetworkNamespace, specs.IPCNamespace, specs.UTSNamespace, specs.CgroupNamespace} {
				assert.Contains(t, nsTypes, want)
			}
			if c.userns {
				assert.Contains(t, nsTypes, specs.UserNamespace)
				want := []specs.LinuxIDMapping{{ContainerID: 0, HostID: base, Size: c.mapped}}
				assert.Equal(t, want, s.Linux.UIDMappings)
				assert.Equal(t, want, s.Linux.GIDMappings)
			} else {
				assert.NotContains(t, nsTypes, specs.UserNamespace)
				assert.Empty(t, s.Linux.UIDMappings)
				assert.Empty(t, s.Linux.GIDMappings)
			}

			assert.True(t, s.Process.NoNewPrivileges, "no new privileges")
			require.NotNil(t, s.Process.Capabilities)
			for _, set := range [][]string{s.Process.Capabilities.Bounding, s.Process.Capabilities.Effective, s.Process.Capabilities.Permitted,
				s.Process.Capabilities.Inheritable, s.Process.Capabilities.Ambient} {
				for _, c := range set {
					assert.Contains(t, sandboxCaps, c, "a capability beyond containerd's default set")
				}
				assert.NotContains(t, set, "CAP_SYS_ADMIN")
				assert.NotContains(t, set, "CAP_NET_RAW")
			}
			assert.Empty(t, s.Process.Capabilities.Ambient)

			require.NotNil(t, s.Linux.Seccomp, "containerd's default seccomp profile")
			assert.Equal(t, specs.ActErrno, s.Linux.Seccomp.DefaultAction)
			assert.NotEmpty(t, s.Linux.Seccomp.Syscalls)
			assert.False(t, slices.ContainsFunc(s.Linux.Seccomp.Syscalls, func(sc specs.LinuxSyscall) bool {
				return sc.Action == specs.ActAllow && slices.Contains(sc.Names, "mount")
			}), "mount is not allowed without CAP_SYS_ADMIN")

			require.NotNil(t, s.Linux.Resources)
			require.NotNil(t, s.Linux.Resources.Pids)
			assert.Equal(t, int64(DefaultPidsLimit), *s.Linux.Resources.Pids.Limit)
			require.NotNil(t, s.Linux.Resources.Memory)
			assert.Equal(t, int64(DefaultMemoryLimit), *s.Linux.Resources.Memory.Limit)
			assert.Equal(t, int64(DefaultMemoryLimit), *s.Linux.Resources.Memory.Swap, "memory and swap together: no swap on top")
			assert.Equal(t, "/lazyconv-recorder/lazyconv-record-1-x", s.Linux.CgroupsPath)

			tmpfs := 0
			for _, m := range s.Mounts {
				if m.Type != "tmpfs" {
					continue
				}
				tmpfs++
				var sizes []string
				for _, o := range m.Options {
					if v, ok := strings.CutPrefix(o, "size="); ok {
						sizes = append(sizes, v)
					}
				}
				require.Len(t, sizes, 1, "%s: one size= option", m.Destination)
				n, err := parseTmpfsSize(sizes[0])
				require.NoError(t, err)
				assert.LessOrEqual(t, n, int64(1<<20), "%s is at most the tmpfs size", m.Destination)
			}
			assert.NotZero(t, tmpfs)
		})
	}
}

func TestBuildSpecLimitsCanBeTurnedOff(t *testing.T) {
	s, err := buildSpec(context.Background(), sandbox{id: "x", rootfs: specRootfs(t), args: []string{"/a"}, pids: -1, memory: -1})
	require.NoError(t, err)
	assert.Nil(t, s.Linux.Resources.Pids)
	assert.Nil(t, s.Linux.Resources.Memory)
	for _, m := range s.Mounts {
		if m.Type == "tmpfs" {
			assert.Contains(t, m.Options, "size=65536k", "%s keeps containerd's size", m.Destination)
		}
	}
}

func TestBuildSpecLimitsSwapOnlyWhereItIsAccounted(t *testing.T) {
	s, err := buildSpec(context.Background(), sandbox{id: "x", rootfs: specRootfs(t), args: []string{"/a"}, memory: 1 << 20})
	require.NoError(t, err)
	require.NotNil(t, s.Linux.Resources.Memory)
	assert.Equal(t, int64(1<<20), *s.Linux.Resources.Memory.Limit)
	assert.Nil(t, s.Linux.Resources.Memory.Swap, "runc fails on a swap limit where cgroups do not account for swap")
}

func TestWithTmpfsSize(t *testing.T) {
	cases := []struct {
		name string
		opts []string
		size int64
		want []string
	}{
		{"smaller size kept", []string{"mode=755", "size=65536k"}, 256 << 20, []string{"mode=755", "size=65536k"}},
		{"larger size lowered", []string{"mode=755", "size=65536k"}, 1 << 20, []string{"mode=755", "size=1048576"}},
		{"no size gets one", []string{"mode=1777"}, 1 << 20, []string{"mode=1777", "size=1048576"}},
		{"percentage replaced", []string{"size=50%"}, 1 << 20, []string{"size=1048576"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			assert.Equal(t, c.want, withTmpfsSize(c.opts, c.size))
		})
	}
}

func TestParseUserNamespaceMode(t *testing.T) {
	for in, want := range map[string]UserNamespaceMode{"": UserNamespaceAuto, "auto": UserNamespaceAuto, "require": UserNamespaceRequire, "off": UserNamespaceOff} {
		got, err := ParseUserNamespaceMode(in)
		require.NoError(t, err)
		assert.Equal(t, want, got)
	}
	_, err := ParseUserNamespaceMode("on")
	assert.ErrorIs(t, err, errdefs.ErrInvalidArgument)
}

func TestIndexBoundsTheUnpackedSize(t *testing.T) {
	cases := []struct {
		typ  byte
		size int64
		want int64
	}{
		{tar.TypeReg, 0, 0}, {tar.TypeReg, 1, 4096}, {tar.TypeReg, 4096, 4096}, {tar.TypeReg, 4097, 8192},
		{tar.TypeDir, 0, 0}, {tar.TypeLink, 0, 0}, {tar.TypeSymlink, 0, 4096}, {tar.TypeChar, 0, 4096},
	}
	for _, c := range cases {
		assert.Equal(t, c.want, tmpfsBytes(c.typ, c.size), "type %c size %d", c.typ, c.size)
	}
}

// TestPrepareRootfsSizesTheTmpfsAndShiftsOwners unpacks an image as a run
// in a user namespace does: on a tmpfs sized to the image and the room
// more, files owned by the host IDs their owners map to.
func TestPrepareRootfsSizesTheTmpfsAndShiftsOwners(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root (CI runs as root)")
	}
	ctx := namespaces.WithNamespace(context.Background(), "test")
	st, err := localstore.Open(ctx, t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	entries := []imagegen.Entry{
		{Header: tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}},
		{Header: tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644}, Body: []byte(testPasswd)},
		{Header: tar.Header{Name: "home/", Typeflag: tar.TypeDir, Mode: 0o755, Uid: 1234, Gid: 2345}},
		{Header: tar.Header{Name: "home/big", Typeflag: tar.TypeReg, Mode: 0o4755, Uid: 1234, Gid: 2345}, Body: make([]byte, 10000)},
		{Header: tar.Header{Name: "home/link", Typeflag: tar.TypeLink, Linkname: "home/big", Mode: 0o4755, Uid: 1234, Gid: 2345}},
	}
	img := imagegen.Image{Name: "ids:v1", Layers: []imagegen.Layer{{MediaType: ocispec.MediaTypeImageLayerGzip, Blob: imagegen.Compress(imagegen.TarBytes(entries), "gzip")}}}
	target, err := imagegen.Store(ctx, st.ContentStore(), st.ImageStore(), img)
	require.NoError(t, err)
	ix, err := BuildIndex(ctx, st.ContentStore(), target, platforms.All)
	require.NoError(t, err)
	assert.Equal(t, int64(4096+12288), ix.unpackedBytes(), "passwd in a page, big in three, nothing for the directories and the hard link")

	mdesc, err := manifestDescriptor(ctx, st.ContentStore(), target, platforms.All)
	require.NoError(t, err)
	m, err := images.Manifest(ctx, st.ContentStore(), mdesc, platforms.All)
	require.NoError(t, err)
	rootfs := t.TempDir()
	base := uint32(0x200000)
	room := int64(1 << 20)
	require.NoError(t, prepareRootfs(ctx, st.ContentStore(), m.Layers, rootfs, ix.unpackedBytes(), room, &base))
	t.Cleanup(func() { _ = unix.Unmount(rootfs, unix.MNT_DETACH) })

	var fs unix.Statfs_t
	require.NoError(t, unix.Statfs(rootfs, &fs))
	assert.Equal(t, ix.unpackedBytes()+room, int64(fs.Blocks)*fs.Bsize, "the tmpfs holds the image and the room")

	owner := func(p string) (uint32, uint32, os.FileMode) {
		fi, err := os.Lstat(filepath.Join(rootfs, p))
		require.NoError(t, err)
		st := fi.Sys().(*syscall.Stat_t)
		return st.Uid, st.Gid, fi.Mode()
	}
	uid, gid, _ := owner(".")
	assert.Equal(t, []uint32{base, base}, []uint32{uid, gid}, "the root is the namespace's root")
	uid, gid, _ = owner("etc/passwd")
	assert.Equal(t, []uint32{base, base}, []uint32{uid, gid})
	uid, gid, mode := owner("home/big")
	assert.Equal(t, []uint32{base + 1234, base + 2345}, []uint32{uid, gid}, "shifted once, hard link or not")
	assert.NotZero(t, mode&os.ModeSetuid, "the setuid bit survives")
}

func TestExplainCreateSaysWhatCgroupFailuresMean(t *testing.T) {
	cases := []struct {
		name        string
		err         error
		unavailable bool
	}{
		{"read-only cgroups", errors.New("runc create: unable to apply cgroup configuration: mkdir /sys/fs/cgroup/cpuset/x: read-only file system"), true},
		{"a missing controller", errors.New("runc create: cannot set memory limit: container could not join or create cgroup"), true},
		{"anything else", errors.New("runc create: exec: \"/bin/app\": no such file"), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := explainCreate(c.err)
			require.ErrorIs(t, err, c.err)
			assert.Equal(t, c.unavailable, errors.Is(err, errdefs.ErrUnavailable))
			if c.unavailable {
				assert.Contains(t, err.Error(), "MemoryLimit -1")
			}
		})
	}
}
