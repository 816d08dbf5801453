package layerio

import (
	"archive/tar"
	"bufio"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/containerd/errdefs"

	"github.com/lazyconv/lazyconv/converter"
)

// inspector reads the tar stream a Source yields, as it is yielded, with Go's
// tar reader: it refuses entries that escape the layer root and layers beyond
// the limits, and lists the entries no lossless format can carry byte for
// byte (sparse files). It sees every byte through a pipe the Source writes
// to, so it adds no buffering, and its verdict is known by the time the
// Source has been read to its end.
type inspector struct {
	pw     *io.PipeWriter
	bw     *bufio.Writer // batches the Source's reads into the pipe
	done   chan struct{}
	limits converter.Limits

	failed atomic.Pointer[error] // the verdict, read on every Read of the Source

	mu       sync.Mutex
	reserved map[string]bool // paths the output format keeps for itself
	sparse   []string
	expanded int64 // logical bytes of sparse files
	entries  int64
}

func newInspector(limits converter.Limits) *inspector {
	return &inspector{limits: limits}
}

// start starts the inspector's own parse, fed by write.
func (in *inspector) start() {
	pr, pw := io.Pipe()
	in.pw, in.bw, in.done = pw, bufio.NewWriterSize(pw, 64<<10), make(chan struct{})
	go in.run(pr)
}

// started tells whether the inspector parses the stream itself.
func (in *inspector) started() bool { return in.pw != nil }

// write hands the inspector the next bytes of the stream.
func (in *inspector) write(p []byte) {
	_, _ = in.bw.Write(p) // the reader drains whatever happens
}

// finish ends the stream and waits for the verdict.
func (in *inspector) finish() error {
	_ = in.bw.Flush()
	_ = in.pw.Close()
	<-in.done
	return in.failure()
}

// errSourceClosed ends an inspection the Source gave up on.
var errSourceClosed = errors.New("source closed")

// abort stops the inspector without a verdict.
func (in *inspector) abort() {
	_ = in.pw.CloseWithError(errSourceClosed)
	<-in.done
}

func (in *inspector) failure() error {
	if p := in.failed.Load(); p != nil {
		return *p
	}
	return nil
}

// fail records the first rule broken.
func (in *inspector) fail(err error) { in.failed.CompareAndSwap(nil, &err) }

func (in *inspector) run(pr *io.PipeReader) {
	defer close(in.done)
	defer io.Copy(io.Discard, pr) //nolint:errcheck // never block the writer
	tr := tar.NewReader(pr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			in.trailing(pr)
			return
		}
		if err != nil {
			if !errors.Is(err, io.ErrClosedPipe) && !errors.Is(err, errSourceClosed) {
				in.fail(fmt.Errorf("not a valid tar after %d entries: %v: %w", in.entries, err, errdefs.ErrInvalidArgument))
			}
			return
		}
		if err := in.entry(h); err != nil {
			in.fail(err)
			return
		}
	}
}

// entry checks one header.
func (in *inspector) entry(h *tar.Header) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.entries++
	if converter.Exceeds(in.entries, in.limits.MaxEntries) {
		return fmt.Errorf("the layer has more than %d entries (the limit; raise max_entries to convert it): %w",
			in.limits.MaxEntries, errdefs.ErrInvalidArgument)
	}
	if err := SafeName(h.Name); err != nil {
		return fmt.Errorf("entry %q: %w", h.Name, err)
	}
	if in.reserved[path.Clean(h.Name)] {
		return fmt.Errorf("entry %q has a name the output format keeps for its own metadata: %w", h.Name, errdefs.ErrInvalidArgument)
	}
	if h.Typeflag == tar.TypeLink {
		if err := SafeName(h.Linkname); err != nil {
			return fmt.Errorf("hard link %q to %q: %w", h.Name, h.Linkname, err)
		}
	}
	if IsSparse(h) {
		in.sparse = append(in.sparse, h.Name)
		in.expanded += h.Size
		if converter.Exceeds(in.expanded, in.limits.MaxExpandedBytes) {
			return fmt.Errorf("sparse file %q takes the layer's sparse files to %d bytes once expanded, beyond the limit of %d "+
				"(raise max_expanded_bytes to convert it): %w", h.Name, in.expanded, in.limits.MaxExpandedBytes, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// trailing counts what follows the end-of-archive marker, and fails as soon
// as it is beyond the limit (estargz's lossless writer holds it in memory).
func (in *inspector) trailing(r io.Reader) {
	max := in.limits.MaxTrailingBytes
	if max < 0 {
		return
	}
	n, _ := io.CopyN(io.Discard, r, max+1)
	if err := in.trailingLimit(n); err != nil {
		in.fail(err)
	}
}

// trailingLimit refuses n bytes after the end-of-archive marker when they
// are beyond the limit.
func (in *inspector) trailingLimit(n int64) error {
	if max := in.limits.MaxTrailingBytes; max >= 0 && converter.Exceeds(n, max) {
		return fmt.Errorf("more than %d bytes follow the tar's end-of-archive marker (the limit; raise max_trailing_bytes to convert it): %w",
			max, errdefs.ErrInvalidArgument)
	}
	return nil
}

// IsSparse tells a sparse file (old GNU 'S', or GNU's PAX sparse formats 0.0,
// 0.1 and 1.0): Go's reader expands it, so its logical size is h.Size.
func IsSparse(h *tar.Header) bool {
	if h.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

// SafeName refuses a layer path that is absolute or whose ".." components
// climb out of the layer root, with ErrInvalidArgument. (Symlink targets are
// not layer paths: absolute ones are normal.)
func SafeName(name string) error {
	if name == "" {
		return fmt.Errorf("empty name: %w", errdefs.ErrInvalidArgument)
	}
	if strings.HasPrefix(name, "/") {
		return fmt.Errorf("absolute path: %w", errdefs.ErrInvalidArgument)
	}
	if c := path.Clean(name); c == ".." || strings.HasPrefix(c, "../") {
		return fmt.Errorf("path climbs out of the layer root: %w", errdefs.ErrInvalidArgument)
	}
	return nil
}
