package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/lazyconv/lazyconv/internal/layerio"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/singleflight"
)

// Fetcher makes missing blobs local by fetching them from the registry
// their image came from: one fetch per digest at a time, committed under the
// caller's lease, with the source recorded as a distribution-source label.
// Share one Fetcher per store, so that concurrent requests fetch a digest once.
type Fetcher struct {
	cs      content.Store
	lm      leases.Manager
	flights singleflight.Group
	fetched atomic.Int64
}

// NewFetcher returns a Fetcher writing to cs, with leases from lm.
func NewFetcher(cs content.Store, lm leases.Manager) *Fetcher {
	return &Fetcher{cs: cs, lm: lm}
}

// Fetched counts the blobs this Fetcher fetched.
func (f *Fetcher) Fetched() int64 { return f.fetched.Load() }

// Ensure makes desc local when it is missing, fetching it through resolver
// from the image's own repository (imageRef, the name it was pulled as), or
// else from the sources recorded on parent (the manifest that lists it).
// bytesIn, if not nil, is advanced by the bytes fetched. A blob already local
// costs one Info.
func (f *Fetcher) Ensure(ctx context.Context, resolver remotes.Resolver, desc, parent ocispec.Descriptor, imageRef string, bytesIn *atomic.Int64) error {
	if _, err := f.cs.Info(ctx, desc.Digest); err == nil {
		return nil
	} else if !errdefs.IsNotFound(err) {
		return err
	}
	pinfo, err := f.cs.Info(ctx, parent.Digest)
	if err != nil {
		return fmt.Errorf("blob %s is missing and its manifest %s too: %w", desc.Digest, parent.Digest, err)
	}
	var sources []Source
	if src, err := SourceOf(imageRef); err == nil {
		sources = append(sources, src)
	}
	sources = append(sources, Sources(pinfo)...)
	if len(sources) == 0 {
		return fmt.Errorf("blob %s is missing and manifest %s records no registry to fetch it from: %w",
			desc.Digest, parent.Digest, errdefs.ErrNotFound)
	}
	return f.ensure(ctx, resolver, desc, sources, bytesIn)
}

// EnsureFrom makes desc local when it is missing, fetching it from src
// alone (a published conversion's repository), as Ensure does.
func (f *Fetcher) EnsureFrom(ctx context.Context, resolver remotes.Resolver, desc ocispec.Descriptor, src Source, bytesIn *atomic.Int64) error {
	if _, err := f.cs.Info(ctx, desc.Digest); err == nil {
		return nil
	} else if !errdefs.IsNotFound(err) {
		return err
	}
	return f.ensure(ctx, resolver, desc, []Source{src}, bytesIn)
}

// ensure fetches desc from the first of sources that serves it, once per
// (namespace, digest) at a time, and holds it under ctx's lease.
func (f *Fetcher) ensure(ctx context.Context, resolver remotes.Resolver, desc ocispec.Descriptor, sources []Source, bytesIn *atomic.Int64) error {
	// Keyed by namespace too: a blob committed in another namespace is not
	// this one's, and neither are its caller's credentials or cancellation.
	ns, _ := namespaces.Namespace(ctx)
	_, err, _ := f.flights.Do(ns+"\x00"+desc.Digest.String(), func() (any, error) {
		// Another caller may have finished just before this one asked.
		if _, err := f.cs.Info(ctx, desc.Digest); err == nil {
			return nil, nil
		}
		return nil, f.fetchFirst(ctx, resolver, desc, sources, bytesIn)
	})
	if err != nil {
		return err
	}
	// The blob may have been fetched under another caller's lease: hold it under ours too.
	if id, ok := leases.FromContext(ctx); ok {
		if err := f.lm.AddResource(ctx, leases.Lease{ID: id}, leases.Resource{ID: desc.Digest.String(), Type: "content"}); err != nil {
			return err
		}
	}
	return nil
}

// fetchFirst fetches the blob from the first source that serves it, in
// order; when none does, the error names each one tried and why it failed.
func (f *Fetcher) fetchFirst(ctx context.Context, resolver remotes.Resolver, desc ocispec.Descriptor, sources []Source, bytesIn *atomic.Int64) error {
	var errs []error
	for _, src := range sources {
		if bytesIn != nil {
			bytesIn.Store(0)
		}
		err := f.fetch(ctx, resolver, desc, src, bytesIn)
		if err == nil {
			return nil
		}
		if ctxErr := context.Cause(ctx); ctxErr != nil {
			return ctxErr
		}
		errs = append(errs, err)
	}
	if len(errs) == 1 {
		return errs[0]
	}
	err := errors.Join(errs...)
	var class error = errdefs.ErrUnavailable
	if errdefs.IsNotFound(errs[len(errs)-1]) {
		class = errdefs.ErrNotFound
	}
	return fmt.Errorf("blob %s could be fetched from none of the %d registries it is known in: %v: %w", desc.Digest, len(errs), err, class)
}

// fetch streams one blob from src into the store; on any failure the ingest
// is aborted, so nothing half-fetched remains.
func (f *Fetcher) fetch(ctx context.Context, resolver remotes.Resolver, desc ocispec.Descriptor, src Source, bytesIn *atomic.Int64) (retErr error) {
	fetcher, err := resolver.Fetcher(ctx, src.Host+"/"+src.Repository)
	if err != nil {
		return fmt.Errorf("fetcher for %s/%s: %w", src.Host, src.Repository, err)
	}
	rc, err := fetcher.Fetch(ctx, desc)
	if err != nil {
		return fmt.Errorf("fetching %s from %s/%s: %w", desc.Digest, src.Host, src.Repository, err)
	}
	defer rc.Close()
	ref := "lazyconv-fetch-" + desc.Digest.String()
	w, err := content.OpenWriter(ctx, f.cs, content.WithRef(ref), content.WithDescriptor(desc))
	if err != nil {
		return err
	}
	defer func() {
		w.Close()
		if retErr != nil {
			_ = f.cs.Abort(context.WithoutCancel(ctx), ref)
		}
	}()
	if err := w.Truncate(0); err != nil {
		return err
	}
	n, err := io.Copy(w, &layerio.CountingReader{R: rc, N: bytesIn})
	if err != nil {
		return fmt.Errorf("fetching %s from %s/%s failed after %d of %d bytes (nothing was kept; retry): %v: %w",
			desc.Digest, src.Host, src.Repository, n, desc.Size, err, errdefs.ErrUnavailable)
	}
	if err := w.Commit(ctx, desc.Size, desc.Digest); err != nil && !errdefs.IsAlreadyExists(err) {
		return fmt.Errorf("fetched %s from %s/%s: %w", desc.Digest, src.Host, src.Repository, err)
	}
	f.fetched.Add(1)
	return AddSource(ctx, f.cs, desc.Digest, src)
}
