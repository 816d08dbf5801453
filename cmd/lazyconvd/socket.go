package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
)

// afterListen, when set (by tests), is called with the path the socket was
// created at, right after it is.
var afterListen func(tmp string)

// socketListener is a unix socket listener that removes its socket when
// closed.
type socketListener struct {
	*net.UnixListener
	path string
}

// Close stops listening and removes the socket.
func (l socketListener) Close() error {
	err := l.UnixListener.Close()
	if rerr := os.Remove(l.path); rerr != nil && !os.IsNotExist(rerr) && err == nil {
		err = rerr
	}
	return err
}

// listenSocket listens on a unix socket at path whose mode is mode and whose
// group is gid (-1: lazyconvd's) from the moment anyone can reach it there.
// The socket is created in a private directory (0700, made next to path, so
// on the same filesystem) where nobody else can reach it whatever the umask
// made its mode, is given its mode and group there, and is then renamed onto
// path, replacing a stale socket. Unlike holding a restrictive umask around
// the listen, this leaves the umask of the process (and so of every other
// file it creates meanwhile) alone.
func listenSocket(path string, mode os.FileMode, gid int) (net.Listener, error) {
	dir, err := os.MkdirTemp(filepath.Dir(path), ".lc")
	if err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	tmp := filepath.Join(dir, "s")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening on %s (to be renamed %s): %w", tmp, path, err)
	}
	// The listener's own path is gone once renamed: the rename's target is
	// what Close removes.
	l.SetUnlinkOnClose(false)
	if afterListen != nil {
		afterListen(tmp)
	}
	if err := setupSocket(tmp, path, mode, gid); err != nil {
		l.Close()
		return nil, err
	}
	return socketListener{UnixListener: l, path: path}, nil
}

// setupSocket gives the socket at tmp its mode and group, then moves it to path.
func setupSocket(tmp, path string, mode os.FileMode, gid int) error {
	if gid >= 0 {
		if err := os.Chown(tmp, -1, gid); err != nil {
			return fmt.Errorf("socket group: %w", err)
		}
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return fmt.Errorf("socket mode: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	return nil
}
