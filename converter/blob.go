package converter

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// writtenBlob is a blob writeBlob committed.
type writtenBlob struct {
	Digest digest.Digest
	Size   int64
}

// writeBlob streams a new blob into cs under ref: produce writes the content
// and returns the labels to commit it with. On any failure the ingest is
// aborted, so nothing half-written stays behind. out, if not nil, is advanced
// by the bytes written.
func writeBlob(ctx context.Context, cs content.Store, ref string, out *atomic.Int64, produce func(io.Writer) (map[string]string, error)) (_ writtenBlob, retErr error) {
	w, err := content.OpenWriter(ctx, cs, content.WithRef(ref))
	if err != nil {
		return writtenBlob{}, fmt.Errorf("opening writer %s: %w", ref, err)
	}
	defer func() {
		w.Close()
		if retErr != nil {
			_ = cs.Abort(context.WithoutCancel(ctx), ref)
		}
	}()
	// A writer left by an interrupted conversion resumes at its offset; start over.
	if err := w.Truncate(0); err != nil {
		return writtenBlob{}, err
	}
	sink := &storeWriter{w: w, n: out}
	bw := bufio.NewWriterSize(sink, 1<<20)
	lbls, err := produce(bw)
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		if sink.err != nil {
			return writtenBlob{}, sink.err
		}
		return writtenBlob{}, err
	}
	if err := w.Commit(ctx, 0, "", content.WithLabels(lbls)); err != nil {
		if !errdefs.IsAlreadyExists(err) {
			return writtenBlob{}, fmt.Errorf("committing %s: %w", ref, err)
		}
		// The same bytes are already stored: make sure they carry our labels.
		if err := setLabels(ctx, cs, w.Digest(), lbls); err != nil {
			return writtenBlob{}, err
		}
	}
	return writtenBlob{Digest: w.Digest(), Size: sink.written}, nil
}

// storeWriter remembers the store's write error, so that a failed conversion
// can tell a failing store from bad input.
type storeWriter struct {
	w       io.Writer
	n       *atomic.Int64
	written int64
	err     error
}

func (s *storeWriter) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	s.written += int64(n)
	if s.n != nil {
		s.n.Add(int64(n))
	}
	if err != nil && s.err == nil {
		s.err = err
	}
	return n, err
}
