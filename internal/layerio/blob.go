package layerio

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/lazyconv/lazyconv/labels"
)

// Blob is a blob WriteBlob committed.
type Blob struct {
	Digest digest.Digest
	Size   int64
}

// WriteBlob streams a new blob into cs under ref: produce writes the content
// and returns the labels to commit it with. On any failure the ingest is
// aborted, so nothing half-written stays behind. out, if not nil, is advanced
// by the bytes written.
func WriteBlob(ctx context.Context, cs content.Store, ref string, out *atomic.Int64, produce func(io.Writer) (map[string]string, error)) (_ Blob, retErr error) {
	w, err := content.OpenWriter(ctx, cs, content.WithRef(ref))
	if err != nil {
		return Blob{}, fmt.Errorf("opening writer %s: %w", ref, err)
	}
	defer func() {
		w.Close()
		if retErr != nil {
			_ = cs.Abort(context.WithoutCancel(ctx), ref)
		}
	}()
	// A writer left by an interrupted conversion resumes at its offset; start over.
	if err := w.Truncate(0); err != nil {
		return Blob{}, err
	}
	sink := &storeWriter{w: w, n: out}
	bw := bufio.NewWriterSize(sink, 1<<20)
	lbls, err := produce(bw)
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		if sink.err != nil {
			return Blob{}, sink.err
		}
		return Blob{}, err
	}
	if err := w.Commit(ctx, 0, "", content.WithLabels(lbls)); err != nil {
		if !errdefs.IsAlreadyExists(err) {
			return Blob{}, fmt.Errorf("committing %s: %w", ref, err)
		}
		// The same bytes are already stored: make sure they carry our labels.
		if err := labels.Set(ctx, cs, w.Digest(), lbls); err != nil {
			return Blob{}, err
		}
	}
	return Blob{Digest: w.Digest(), Size: sink.written}, nil
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

// IngestRef is the ingest reference of the conversion of source to variant:
// one per (variant, source), so a retried conversion takes over the ingest
// an interrupted one left.
func IngestRef(variant string, source digest.Digest) string {
	return "lazyconv-" + variant + "-" + source.Encoded()
}
