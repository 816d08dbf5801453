// Package socistore runs soci-snapshotter's own SOCI index builder over
// containerd's stores in-process, as lazyconv's tests and benchmarks compare
// its output and speed with the soci format's: soci-snapshotter's blob store
// interface over a content store and a lease manager.
package socistore

import (
	"context"
	"io"
	"time"

	"github.com/awslabs/soci-snapshotter/soci/store"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// New returns the store over cs, opening batches as leases of lm.
func New(cs content.Store, lm leases.Manager) *Store { return &Store{cs: cs, lm: lm} }

// Store is soci-snapshotter's blob store (soci/store.Store) over a
// containerd content store and lease manager.
type Store struct {
	cs content.Store
	lm leases.Manager
}

var _ store.Store = (*Store)(nil)

// Exists reports whether the blob is in the content store.
func (s *Store) Exists(ctx context.Context, d ocispec.Descriptor) (bool, error) {
	_, err := s.cs.Info(ctx, d.Digest)
	if errdefs.IsNotFound(err) {
		return false, nil
	}
	return err == nil, err
}

// blobReader is a content.ReaderAt that also reads in order.
type blobReader struct {
	content.ReaderAt
	*io.SectionReader
}

func (r blobReader) Read(p []byte) (int, error)              { return r.SectionReader.Read(p) }
func (r blobReader) ReadAt(p []byte, off int64) (int, error) { return r.SectionReader.ReadAt(p, off) }
func (r blobReader) Size() int64                             { return r.SectionReader.Size() }

// Fetch opens the blob.
func (s *Store) Fetch(ctx context.Context, d ocispec.Descriptor) (io.ReadCloser, error) {
	ra, err := s.cs.ReaderAt(ctx, d)
	if err != nil {
		return nil, err
	}
	return blobReader{ra, io.NewSectionReader(ra, 0, ra.Size())}, nil
}

// Push writes the blob (under ctx's lease).
func (s *Store) Push(ctx context.Context, d ocispec.Descriptor, r io.Reader) error {
	return content.WriteBlob(ctx, s.cs, "soci-"+d.Digest.String(), r, d)
}

// Label sets one label on the blob.
func (s *Store) Label(ctx context.Context, d ocispec.Descriptor, name, value string) error {
	_, err := s.cs.Update(ctx, content.Info{Digest: d.Digest, Labels: map[string]string{name: value}}, "labels."+name)
	return err
}

// Delete removes the blob.
func (s *Store) Delete(ctx context.Context, dg digest.Digest) error { return s.cs.Delete(ctx, dg) }

// BatchOpen holds what the batch writes under a lease of an hour, deleted
// by the cleanup.
func (s *Store) BatchOpen(ctx context.Context) (context.Context, store.CleanupFunc, error) {
	l, err := s.lm.Create(ctx, leases.WithRandomID(), leases.WithExpiration(time.Hour))
	if err != nil {
		return ctx, store.NopCleanup, err
	}
	return leases.WithLease(ctx, l.ID), func(ctx context.Context) error { return s.lm.Delete(ctx, l) }, nil
}
