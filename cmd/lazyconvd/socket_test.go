package main

import (
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// permissiveUmask sets the process's umask to 0 for the test: a socket made
// by a plain Listen would then be 0777.
func permissiveUmask(t *testing.T) {
	old := syscall.Umask(0)
	t.Cleanup(func() { syscall.Umask(old) })
}

func TestListenSocketHasItsModeFromTheStart(t *testing.T) {
	permissiveUmask(t)
	for _, tc := range []struct {
		name  string
		mode  os.FileMode
		stale bool
	}{
		{"0660", 0o660, false},
		{"0600", 0o600, false},
		{"a stale socket is replaced", 0o660, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "lazyconvd.sock")
			if tc.stale {
				stale, err := net.Listen("unix", path)
				require.NoError(t, err)
				stale.(*net.UnixListener).SetUnlinkOnClose(false)
				require.NoError(t, stale.Close())
			}
			var seen bool
			afterListen = func(tmp string) {
				seen = true
				// Right after the listen: at a path only lazyconvd can reach,
				// and not yet where clients look.
				fi, err := os.Stat(filepath.Dir(tmp))
				require.NoError(t, err)
				assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm(), "the socket is made in a private directory")
				assert.Equal(t, filepath.Dir(path), filepath.Dir(filepath.Dir(tmp)), "next to its final path (one filesystem)")
				if !tc.stale {
					_, err = os.Lstat(path)
					assert.True(t, os.IsNotExist(err), "nothing at the final path yet: %v", err)
				}
			}
			t.Cleanup(func() { afterListen = nil })

			l, err := listenSocket(path, tc.mode, -1)
			require.NoError(t, err)
			assert.True(t, seen)
			fi, err := os.Lstat(path)
			require.NoError(t, err)
			assert.Equal(t, os.ModeSocket, fi.Mode().Type())
			assert.Equal(t, tc.mode, fi.Mode().Perm(), "the socket has the requested mode, whatever the umask")
			entries, err := os.ReadDir(dir)
			require.NoError(t, err)
			assert.Len(t, entries, 1, "the private directory is gone")

			accepted := make(chan error, 1)
			go func() {
				c, err := l.Accept()
				if err == nil {
					c.Close()
				}
				accepted <- err
			}()
			c, err := net.Dial("unix", path)
			require.NoError(t, err, "clients reach it at its final path")
			c.Close()
			require.NoError(t, <-accepted)

			require.NoError(t, l.Close())
			_, err = os.Lstat(path)
			assert.True(t, os.IsNotExist(err), "closing removes the socket")
		})
	}
}

func TestListenSocketSetsItsGroup(t *testing.T) {
	permissiveUmask(t)
	gid := os.Getgid()
	if groups, err := os.Getgroups(); err == nil {
		for _, g := range groups {
			if g != gid {
				gid = g // a group that is not the default one, when there is one
				break
			}
		}
	}
	path := filepath.Join(t.TempDir(), "lazyconvd.sock")
	l, err := listenSocket(path, 0o660, gid)
	require.NoError(t, err)
	defer l.Close()
	fi, err := os.Lstat(path)
	require.NoError(t, err)
	assert.Equal(t, uint32(gid), fi.Sys().(*syscall.Stat_t).Gid)
	assert.Equal(t, os.FileMode(0o660), fi.Mode().Perm())
}

func TestListenSocketFailsCleanly(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "taken")
	require.NoError(t, os.Mkdir(path, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(path, "f"), nil, 0o644))
	_, err := listenSocket(path, 0o660, -1)
	require.Error(t, err, "a non-empty directory is not replaced")
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 1, "no private directory is left behind")
}
