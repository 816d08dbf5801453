package converter

import (
	"context"
	"fmt"
	"maps"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/internal/flight"
	"github.com/lazyconv/lazyconv/labels"
)

// LayerResult is the outcome of converting one layer.
type LayerResult struct {
	// Source is the layer converted.
	Source ocispec.Descriptor
	// Desc is the layer to use in its place (Source itself when kept).
	Desc ocispec.Descriptor
	// DiffID is Desc's uncompressed digest, when known.
	DiffID digest.Digest
	// State is StateCommitted, StateCached or StateKept.
	State LayerState
	// NotLossless names the entries Desc does not carry byte for byte
	// (see Output.NotLossless).
	NotLossless []string
	// SourceDiffID is the source's uncompressed digest, when it was computed
	// on the way or is cached as a label ("" otherwise).
	SourceDiffID digest.Digest
	// Origin is where the source came from when it was not in the content
	// store (OriginSnapshot, OriginRegistry), else "".
	Origin string
	// Verified, for a StateShared layer, says it was fetched and checked
	// against its source here (false: adopted unread from a trusted publisher).
	Verified bool
	// links are the labels to write once the whole conversion succeeded.
	links []labelUpdate
	// variant names the converter that produced Desc.
	variant string
}

type labelUpdate struct {
	dgst   digest.Digest
	labels map[string]string
}

// Converter runs layer conversions over a content store: bounded workers, one
// conversion per (namespace, source, variant) at a time, a variant cache kept
// in labels, and every write under a lease. It is safe for concurrent use and
// meant to be shared by every request of a process.
type Converter struct {
	cs      content.Store
	lm      leases.Manager
	workers chan struct{}
	flights flight.Group[flightResult]
	// diffPairs computes diffIDs that no label caches yet.
	diffPairs *DiffPairs
	// recent holds finished conversions until they are linked.
	recent sync.Map // flight key -> recentResult
	// conversions counts blobs actually converted (not cached, not kept).
	conversions atomic.Int64
}

type flightResult struct {
	res       LayerResult
	namespace string
	lease     string
}

// Option configures a Converter.
type Option func(*Converter) error

// WithWorkers bounds how many layers are converted at once (default GOMAXPROCS).
func WithWorkers(n int) Option {
	return func(c *Converter) error {
		if n < 1 {
			return fmt.Errorf("workers must be at least 1, got %d: %w", n, errdefs.ErrInvalidArgument)
		}
		c.workers = make(chan struct{}, n)
		return nil
	}
}

// New returns a Converter writing to cs and protecting its work with leases from lm.
func New(cs content.Store, lm leases.Manager, opts ...Option) (*Converter, error) {
	c := &Converter{cs: cs, lm: lm, workers: make(chan struct{}, runtime.GOMAXPROCS(0)), diffPairs: NewDiffPairs(cs)}
	for _, o := range opts {
		if err := o(c); err != nil {
			return nil, err
		}
	}
	c.flights.Release = c.releaseFlight
	return c, nil
}

// ContentStore is the store the Converter works on.
func (c *Converter) ContentStore() content.Store { return c.cs }

// Conversions returns how many blobs this Converter has converted (cache hits
// and layers kept as they are do not count).
func (c *Converter) Conversions() int64 { return c.conversions.Load() }

// ConvertLayer converts one layer with lc, from the variant cache when it can.
// The caller's lease (from ctx) gains the result; the variant is linked to its
// source only by Link, once the caller's whole conversion succeeded.
func (c *Converter) ConvertLayer(ctx context.Context, lc LayerConverter, desc ocispec.Descriptor, p *Progress) (LayerResult, error) {
	return c.convertTracked(ctx, lc, desc, p.layer(desc.Digest, desc.Size))
}

// convertTracked is ConvertLayer reporting to lp (the manifest's layer,
// which desc may have been rebuilt for).
func (c *Converter) convertTracked(ctx context.Context, lc LayerConverter, desc ocispec.Descriptor, lp *layerProgress) (LayerResult, error) {
	res, err := c.cachedOrConverted(ctx, lc, desc, lp)
	if err != nil {
		lp.set(StateFailed)
		if ctxErr := context.Cause(ctx); ctxErr != nil {
			return LayerResult{}, ctxErr
		}
		return LayerResult{}, fmt.Errorf("converting layer %s to %s: %w", desc.Digest, lc.Variant(), err)
	}
	lp.setOutput(res.Desc.Digest, res.Desc.Size, res.Desc.Annotations[labels.NotLosslessAnnotation])
	lp.set(res.State)
	return res, nil
}

// cachedOrConverted answers from the variant cache, else from a finished but
// unlinked conversion, else joins (or starts) the one conversion in flight.
func (c *Converter) cachedOrConverted(ctx context.Context, lc LayerConverter, desc ocispec.Descriptor, lp *layerProgress) (LayerResult, error) {
	info, err := c.cs.Info(ctx, desc.Digest)
	if err != nil {
		return LayerResult{}, err
	}
	if info.Size != desc.Size {
		return LayerResult{}, fmt.Errorf("its descriptor says %d bytes but the blob has %d: %w", desc.Size, info.Size, errdefs.ErrInvalidArgument)
	}
	if res, ok := c.cached(ctx, lc, desc, info); ok {
		return res, nil
	}
	ns, _ := namespaces.Namespace(ctx)
	key := ns + "\x00" + desc.Digest.String() + "\x00" + lc.Variant()
	if res, ok := c.unlinked(ctx, key); ok {
		return res, nil
	}
	fr, _, err := c.flights.Do(ctx, key, func(ctx context.Context) (flightResult, error) {
		fr, err := c.runFlight(ctx, lc, desc, info, lp)
		if err == nil && fr.res.State == StateCommitted {
			c.recent.Store(key, &recentResult{res: fr.res, at: time.Now()})
		}
		return fr, err
	}, func(fr flightResult) error {
		return c.adopt(ctx, fr)
	})
	if err != nil {
		return LayerResult{}, err
	}
	return fr.res, nil
}

// recentResult is a conversion that finished but whose variant is not linked
// yet (its image conversion is still running): a request arriving in that
// window reuses it instead of converting again.
type recentResult struct {
	res LayerResult
	at  time.Time
}

// unlinked returns a recent, not yet linked conversion of key, added to the
// caller's lease, if its blob is still there.
func (c *Converter) unlinked(ctx context.Context, key string) (LayerResult, bool) {
	v, ok := c.recent.Load(key)
	if !ok {
		return LayerResult{}, false
	}
	r := v.(*recentResult)
	if time.Since(r.at) > time.Hour { // the flight's lease has expired by now
		c.recent.CompareAndDelete(key, v)
		return LayerResult{}, false
	}
	// Hold the blob first, then check it is still there.
	if err := c.adopt(ctx, flightResult{res: r.res}); err != nil {
		return LayerResult{}, false
	}
	if _, err := c.cs.Info(ctx, r.res.Desc.Digest); err != nil {
		c.recent.CompareAndDelete(key, v)
		if id, ok := leases.FromContext(ctx); ok {
			_ = c.lm.DeleteResource(ctx, leases.Lease{ID: id}, leases.Resource{ID: r.res.Desc.Digest.String(), Type: "content"})
		}
		return LayerResult{}, false
	}
	return r.res, true
}

// cached returns the linked variant of desc, if it is still in the store.
func (c *Converter) cached(ctx context.Context, lc LayerConverter, desc ocispec.Descriptor, info content.Info) (LayerResult, bool) {
	vd, ok := labels.Variant(info, lc.Variant())
	if !ok {
		return LayerResult{}, false
	}
	vinfo, err := c.cs.Info(ctx, vd)
	if err != nil {
		log.G(ctx).WithError(err).Debugf("variant %s of %s is linked but not readable", vd, desc.Digest)
		return LayerResult{}, false
	}
	diffID, _ := labels.UncompressedDigest(vinfo)
	out := ocispec.Descriptor{
		MediaType:   lc.MediaType(desc.MediaType),
		Digest:      vd,
		Size:        vinfo.Size,
		Annotations: labels.AnnotationsFromLabels(vinfo),
		Platform:    desc.Platform,
		URLs:        nil,
	}
	srcDiffID, _ := labels.UncompressedDigest(info)
	res := LayerResult{Source: desc, Desc: out, DiffID: diffID, State: StateCached, SourceDiffID: srcDiffID}
	if text, ok := out.Annotations[labels.NotLosslessAnnotation]; ok {
		res.NotLossless = []string{text}
	}
	return res, true
}

// runFlight is the de-duplicated work: it waits for a worker and runs under
// its own lease, which releaseFlight drops once every waiting caller has
// added the result to theirs.
func (c *Converter) runFlight(ctx context.Context, lc LayerConverter, desc ocispec.Descriptor, info content.Info, lp *layerProgress) (flightResult, error) {
	select {
	case c.workers <- struct{}{}:
	case <-ctx.Done():
		return flightResult{}, context.Cause(ctx)
	}
	defer func() { <-c.workers }()

	ns, _ := namespaces.Namespace(ctx)
	l, err := c.lm.Create(ctx, leases.WithRandomID(), leases.WithExpiration(time.Hour),
		leases.WithLabel(labels.LeaseConverting, desc.Digest.String()))
	if err != nil {
		return flightResult{}, fmt.Errorf("creating lease: %w", err)
	}
	fr := flightResult{namespace: ns, lease: l.ID}
	ctx = leases.WithLease(ctx, l.ID)
	res, err := c.keepOrConvert(ctx, lc, desc, info, lp)
	if err != nil {
		c.dropLease(ns, l.ID)
		return flightResult{}, err
	}
	fr.res = res
	return fr, nil
}

// keepOrConvert keeps a layer already in the format, or converts it.
func (c *Converter) keepOrConvert(ctx context.Context, lc LayerConverter, desc ocispec.Descriptor, info content.Info, lp *layerProgress) (LayerResult, error) {
	lp.set(StateReading)
	keep, learnt, err := lc.Keep(ctx, c.cs, desc)
	if err != nil {
		return LayerResult{}, err
	}
	var links []labelUpdate
	if len(learnt) > 0 {
		links = append(links, labelUpdate{dgst: desc.Digest, labels: learnt})
	}
	srcDiffID, _ := labels.UncompressedDigest(info)
	if keep != nil {
		return LayerResult{Source: desc, Desc: *keep, DiffID: srcDiffID, SourceDiffID: srcDiffID, State: StateKept, links: links}, nil
	}
	lp.set(StateConverting)
	conv, err := lc.Convert(ctx, c.cs, desc, Counters{In: &lp.in, Out: &lp.out})
	if err != nil {
		return LayerResult{}, err
	}
	c.conversions.Add(1)
	src := map[string]string{labels.VariantKey(lc.Variant()): conv.Desc.Digest.String()}
	if _, ok := labels.UncompressedDigest(info); !ok && conv.SourceDiffID != "" {
		src[labels.Uncompressed] = conv.SourceDiffID.String()
	}
	links = append(links,
		labelUpdate{dgst: desc.Digest, labels: src},
		labelUpdate{dgst: conv.Desc.Digest, labels: map[string]string{labels.VariantBackRefKey(lc.Variant()): desc.Digest.String()}},
	)
	conv.Desc.Platform = desc.Platform
	if conv.SourceDiffID != "" {
		srcDiffID = conv.SourceDiffID
	}
	return LayerResult{Source: desc, Desc: conv.Desc, DiffID: conv.DiffID, State: StateCommitted, NotLossless: conv.NotLossless,
		SourceDiffID: srcDiffID, links: links, variant: lc.Variant()}, nil
}

// adopt adds a flight's output blob to the caller's lease, if it has one.
func (c *Converter) adopt(ctx context.Context, fr flightResult) error {
	id, ok := leases.FromContext(ctx)
	if !ok || fr.res.State != StateCommitted {
		return nil
	}
	err := c.lm.AddResource(ctx, leases.Lease{ID: id}, leases.Resource{ID: fr.res.Desc.Digest.String(), Type: "content"})
	if err != nil {
		return fmt.Errorf("adding %s to lease %s: %w", fr.res.Desc.Digest, id, err)
	}
	return nil
}

func (c *Converter) releaseFlight(fr flightResult) { c.dropLease(fr.namespace, fr.lease) }

func (c *Converter) dropLease(ns, id string) {
	ctx := namespaces.WithNamespace(context.Background(), ns)
	if err := c.lm.Delete(ctx, leases.Lease{ID: id}); err != nil && !errdefs.IsNotFound(err) {
		log.G(ctx).WithError(err).Warnf("dropping lease %s", id)
	}
}

// Link writes what the given results learnt into the store: each variant is
// linked from its source (a GC reference, which is also the variant cache) and
// back to it, and facts about sources (uncompressed digest, is it eStargz) are
// cached. Call it once the whole conversion succeeded, still under its lease.
func (c *Converter) Link(ctx context.Context, results ...LayerResult) error {
	merged := map[digest.Digest]map[string]string{}
	var order []digest.Digest
	for _, r := range results {
		for _, u := range r.links {
			m, ok := merged[u.dgst]
			if !ok {
				m = map[string]string{}
				merged[u.dgst] = m
				order = append(order, u.dgst)
			}
			maps.Copy(m, u.labels)
		}
	}
	for _, d := range order {
		if err := labels.Set(ctx, c.cs, d, merged[d]); err != nil {
			return err
		}
	}
	// Linked variants are found through their labels from now on.
	ns, _ := namespaces.Namespace(ctx)
	for _, r := range results {
		if r.State == StateCommitted && r.variant != "" {
			c.recent.Delete(ns + "\x00" + r.Source.Digest.String() + "\x00" + r.variant)
		}
	}
	return nil
}
