package converter

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sync/atomic"

	"github.com/containerd/containerd/v2/core/content"
	ctdconverter "github.com/containerd/containerd/v2/core/images/converter"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/lazyconv/lazyconv/labels"
)

// SharedConversions finds conversions of a manifest made elsewhere: another
// node converted the same source and published the result (in the source's
// registry, as a referrer of the source manifest).
type SharedConversions interface {
	// Lookup lists the published conversions of manifest to variant, best
	// first (none is not an error).
	Lookup(ctx context.Context, manifest ocispec.Descriptor, variant string) ([]SharedConversion, error)
}

// SharedConversion is one published conversion of a manifest.
type SharedConversion struct {
	// Manifest is the converted manifest.
	Manifest ocispec.Descriptor
	// Where names the repository holding it, for messages ("host/repo").
	Where string
	// Read returns a blob of that repository (the converted manifest or its
	// config), checked against its descriptor and bounded in size.
	Read func(ctx context.Context, desc ocispec.Descriptor) ([]byte, error)
	// Resolve finds a manifest of that repository by its digest: the
	// descriptor the registry gives (media type and size), which Read then
	// reads (a manifest that a published one names only by digest).
	Resolve func(ctx context.Context, d digest.Digest) (ocispec.Descriptor, error)
	// Adopt records on the local copy of the converted manifest that it
	// and its blobs are in that repository, so that its layers are fetched
	// from there on first use and mounted from there on a push.
	Adopt func(ctx context.Context) error
	// Trusted says the repository matches the operator's trusted
	// publishers: its conversion is adopted without reading its layers.
	// Any other is adopted only once each layer is fetched (Fetch) and
	// checked against its source.
	Trusted bool
	// Fetch makes a blob of that repository local, under ctx's lease;
	// bytesIn, if not nil, is advanced by the bytes fetched.
	Fetch func(ctx context.Context, desc ocispec.Descriptor, bytesIn *atomic.Int64) error
}

// PublishedVerifier is implemented by layer converters that can check a
// variant made elsewhere against its source without converting anything
// (lossless eStargz and zstd:chunked: payload and TOC; recompressions: the
// diffID). A published conversion whose layers' converter has none is
// adopted only from a trusted publisher.
type PublishedVerifier interface {
	// VerifyPublished checks the local blob desc, published as this
	// converter's variant of a layer whose uncompressed digest is
	// sourceDiffID, and returns what a local conversion records of it.
	// A blob that does not check out is ErrInvalidArgument, saying why.
	VerifyPublished(ctx context.Context, cs content.Store, desc ocispec.Descriptor, sourceDiffID digest.Digest) (Verified, error)
}

// Verified is what a verification found a published layer to be.
type Verified struct {
	// DiffID is the blob's uncompressed digest.
	DiffID digest.Digest
	// Annotations are the descriptor annotations a local conversion gives
	// the blob, recomputed from it: the published descriptor must carry
	// exactly these.
	Annotations map[string]string
}

// DiffIDKeeper is implemented by layer converters whose output decompresses
// to the source's own tar (only the compression changes, as zstd:chunked's
// skippable frames do): a variant of theirs must have its source's diffID.
type DiffIDKeeper interface {
	KeepsDiffID() bool
}

// sharedVariant is the variant every layer converts to, or "" when the
// layers have no converter or different ones (an optimized conversion's
// per-layer files): only a whole-image variant is looked up.
func sharedVariant(converters []LayerConverter) string {
	variant := ""
	for _, lc := range converters {
		if lc == nil {
			continue
		}
		if variant != "" && lc.Variant() != variant {
			return ""
		}
		variant = lc.Variant()
	}
	return variant
}

// allCached reports whether every layer's variant is in the local cache (no
// need to ask a registry for what is here).
func (w *imageWalk) allCached(ctx context.Context, layers []ocispec.Descriptor, variant string) bool {
	for _, l := range layers {
		info, err := w.c.cs.Info(ctx, l.Digest)
		if err != nil {
			return false
		}
		vd, ok := labels.Variant(info, variant)
		if !ok || !w.local(ctx, vd) {
			return false
		}
	}
	return true
}

// warn notes a problem that does not fail the conversion.
func (w *imageWalk) warn(ctx context.Context, text string) {
	log.G(ctx).Warn("lazyconv: " + text)
	w.mu.Lock()
	w.warnings = append(w.warnings, text)
	w.mu.Unlock()
}

// fromShared adopts the first published conversion of the manifest desc
// that checks out, and reports its layers as shared. Anything wrong (the
// registry, or a conversion that does not rebuild from the source) is a
// warning, and the caller converts here.
func (w *imageWalk) fromShared(ctx context.Context, desc ocispec.Descriptor, manifest ocispec.Manifest, lbls map[string]string, modified bool,
	converters []LayerConverter, positions []int, configDiffIDs []digest.Digest, variant string) (*ocispec.Descriptor, bool) {
	found, err := w.opts.Shared.Lookup(ctx, desc, variant)
	if err != nil {
		w.warn(ctx, fmt.Sprintf("looking for a published %s conversion of %s: %v; converting here", variant, desc.Digest, err))
		return nil, false
	}
	want := manifest.MediaType
	if want == "" {
		want = desc.MediaType
	}
	for _, sc := range found {
		if sc.Manifest.MediaType != want {
			continue // a conversion with other media types (Docker kept, or made OCI): not this one
		}
		out, layers, err := w.tryShared(ctx, desc, manifest, lbls, modified, converters, positions, configDiffIDs, variant, sc)
		if err == nil {
			err = sc.Adopt(ctx)
		}
		if err == nil && out != nil && sc.Trusted {
			err = w.markUnverified(ctx, out.Digest, sc.Where)
		}
		if err != nil {
			w.warn(ctx, fmt.Sprintf("the %s conversion of %s published in %s (%s) is not used: %v", variant, desc.Digest, sc.Where, sc.Manifest.Digest, err))
			continue
		}
		for _, r := range layers {
			lp := w.opts.Progress.layer(r.Source.Digest, r.Source.Size)
			lp.setOutput(r.Desc.Digest, r.Desc.Size, r.Desc.Annotations[labels.NotLosslessAnnotation])
			lp.setOrigin(OriginRegistry)
			lp.setVerified(r.Verified)
			lp.set(r.State)
		}
		w.mu.Lock()
		w.layers = append(w.layers, layers...)
		w.shared[desc.Digest] = sc.Where + "@" + sc.Manifest.Digest.String()
		w.mu.Unlock()
		return out, true
	}
	return nil, false
}

// tryShared rebuilds the manifest desc with the layers of a published
// conversion, through the same code a local conversion runs, and returns it
// if it is the published manifest: same config but for the diffIDs, same
// layer count, media types of the format, diffIDs consistent with the
// source's. Layers are not read (they stay in the registry until used).
func (w *imageWalk) tryShared(ctx context.Context, desc ocispec.Descriptor, manifest ocispec.Manifest, lbls map[string]string, modified bool,
	converters []LayerConverter, positions []int, configDiffIDs []digest.Digest, variant string, sc SharedConversion) (*ocispec.Descriptor, []LayerResult, error) {
	var published ocispec.Manifest
	if err := readSharedJSON(ctx, sc, sc.Manifest, &published); err != nil {
		return nil, nil, err
	}
	if len(published.Layers) != len(manifest.Layers) {
		return nil, nil, fmt.Errorf("it lists %d layers, the source %d: %w", len(published.Layers), len(manifest.Layers), errdefs.ErrInvalidArgument)
	}
	var cfg struct {
		RootFS ocispec.RootFS `json:"rootfs"`
	}
	if err := readSharedJSON(ctx, sc, published.Config, &cfg); err != nil {
		return nil, nil, err
	}
	if len(cfg.RootFS.DiffIDs) != len(configDiffIDs) {
		return nil, nil, fmt.Errorf("its config lists %d diff_ids, the source's %d: %w", len(cfg.RootFS.DiffIDs), len(configDiffIDs), errdefs.ErrInvalidArgument)
	}
	results := make([]*LayerResult, len(manifest.Layers))
	for i, l := range manifest.Layers {
		r, err := w.sharedLayer(ctx, l, published.Layers[i], converters[i], variant, cfg.RootFS.DiffIDs[positions[i]], configDiffIDs[positions[i]], sc.Trusted)
		if err != nil {
			return nil, nil, fmt.Errorf("layer %d: %w", i, err)
		}
		results[i] = r
	}
	m := manifest
	m.Layers = slices.Clone(manifest.Layers)
	out, layers, err := w.assemble(ctx, desc, m, maps.Clone(lbls), results, modified, variant)
	if err != nil {
		return nil, nil, err
	}
	if out == nil || out.Digest != sc.Manifest.Digest {
		got := desc.Digest
		if out != nil {
			got = out.Digest
		}
		return nil, nil, fmt.Errorf("the source rebuilt with its layers is %s, not the published manifest: %w", got, errdefs.ErrInvalidArgument)
	}
	if !sc.Trusted {
		if err := w.verifyShared(ctx, layers, converters, manifest.Layers, sc); err != nil {
			return nil, nil, err
		}
	}
	return out, layers, nil
}

// verifyShared fetches the layers of a published conversion that are not
// the source's own and checks each against its source, on the converter's
// workers; layers that pass are linked to their sources in the variant
// cache, as a local conversion would be.
func (w *imageWalk) verifyShared(ctx context.Context, layers []LayerResult, converters []LayerConverter, sources []ocispec.Descriptor, sc SharedConversion) error {
	byDigest := map[digest.Digest]LayerConverter{}
	for i, l := range sources {
		byDigest[l.Digest] = converters[i]
	}
	eg, egCtx := errgroup.WithContext(ctx)
	for i := range layers {
		r := &layers[i]
		if r.State != StateShared {
			continue
		}
		pv, ok := byDigest[r.Source.Digest].(PublishedVerifier)
		if !ok {
			return fmt.Errorf("%s layers cannot be checked against their source here (adopt them only from trusted_publishers): %w", r.variant, errdefs.ErrNotImplemented)
		}
		eg.Go(func() error {
			if err := w.verifyLayer(egCtx, r, pv, sc); err != nil {
				return fmt.Errorf("layer %s (%s): %w", r.Desc.Digest, r.Source.Digest, err)
			}
			return nil
		})
	}
	return eg.Wait()
}

// verifyLayer fetches and checks one published layer.
func (w *imageWalk) verifyLayer(ctx context.Context, r *LayerResult, pv PublishedVerifier, sc SharedConversion) error {
	lp := w.opts.Progress.layer(r.Source.Digest, r.Source.Size)
	if !w.local(ctx, r.Desc.Digest) {
		lp.set(StateFetching)
		if err := sc.Fetch(ctx, r.Desc, &lp.in); err != nil {
			return err
		}
	}
	select {
	case w.c.workers <- struct{}{}:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	defer func() { <-w.c.workers }()
	lp.set(StateVerifying)
	v, err := pv.VerifyPublished(ctx, w.c.cs, r.Desc, r.SourceDiffID)
	if err != nil {
		return err
	}
	if v.DiffID != r.DiffID {
		return fmt.Errorf("it is %s uncompressed, but the published config says %s: %w", v.DiffID, r.DiffID, errdefs.ErrInvalidArgument)
	}
	if !maps.Equal(v.Annotations, r.Desc.Annotations) && (len(v.Annotations) > 0 || len(r.Desc.Annotations) > 0) {
		return fmt.Errorf("its descriptor's annotations %v are not what it holds (%v): %w", r.Desc.Annotations, v.Annotations, errdefs.ErrInvalidArgument)
	}
	r.Verified = true
	w.linkShared(ctx, r)
	return nil
}

// linkShared records a shared pair in the local variant cache, where both
// blobs are here (content labels need the blob).
func (w *imageWalk) linkShared(ctx context.Context, r *LayerResult) {
	if w.local(ctx, r.Source.Digest) && w.local(ctx, r.Desc.Digest) {
		r.links = []labelUpdate{
			{dgst: r.Source.Digest, labels: map[string]string{labels.VariantKey(r.variant): r.Desc.Digest.String(), labels.Uncompressed: r.SourceDiffID.String()}},
			{dgst: r.Desc.Digest, labels: sharedBlobLabels(r)},
		}
	}
}

// sharedBlobLabels are what a local conversion labels its blob with: the
// back-reference, its diffID and its descriptor's annotations (from which
// the variant cache rebuilds the descriptor).
func sharedBlobLabels(r *LayerResult) map[string]string {
	out := map[string]string{labels.VariantBackRefKey(r.variant): r.Source.Digest.String(), labels.Uncompressed: r.DiffID.String()}
	labels.AnnotationsToLabels(r.Desc.Annotations, out)
	return out
}

// markUnverified labels a converted manifest adopted unread from the
// trusted publisher where, which is then never published again from here
// (assemble clears the label whenever the manifest is made or verified here).
func (w *imageWalk) markUnverified(ctx context.Context, d digest.Digest, where string) error {
	return labels.Set(ctx, w.c.cs, d, map[string]string{labels.AdoptedUnverified: where})
}

// sharedLayer checks one layer of a published conversion against its
// source l and returns its result (nil for a layer the plan leaves as it is).
func (w *imageWalk) sharedLayer(ctx context.Context, l, published ocispec.Descriptor, lc LayerConverter, variant string, diffID, srcDiffID digest.Digest, trusted bool) (*LayerResult, error) {
	if lc == nil && published.Digest != l.Digest {
		return nil, fmt.Errorf("%s should be the source layer %s: %w", published.Digest, l.Digest, errdefs.ErrInvalidArgument)
	}
	if lc == nil {
		return nil, nil
	}
	if len(published.URLs) > 0 {
		return nil, fmt.Errorf("%s lists URLs to fetch it from (%v), which would send this node's requests anywhere: %w", published.Digest, published.URLs, errdefs.ErrInvalidArgument)
	}
	if len(published.Data) > 0 {
		return nil, fmt.Errorf("%s embeds its data in the descriptor: %w", published.Digest, errdefs.ErrInvalidArgument)
	}
	if published.Digest == l.Digest { // already in the format: the source's own layer
		if !trusted && !keptAnnotations(l.Annotations, published.Annotations) {
			return nil, fmt.Errorf("the source's own layer %s is published with other annotations (%v, not %v): %w",
				l.Digest, published.Annotations, l.Annotations, errdefs.ErrInvalidArgument)
		}
		return &LayerResult{Source: l, Desc: published, DiffID: srcDiffID, SourceDiffID: srcDiffID, State: StateKept}, nil
	}
	want := lc.MediaType(l.MediaType)
	if published.MediaType != want && published.MediaType != ctdconverter.ConvertDockerMediaTypeToOCI(want) {
		return nil, fmt.Errorf("%s has media type %q, not %s's %q: %w", published.Digest, published.MediaType, variant, want, errdefs.ErrInvalidArgument)
	}
	r := &LayerResult{Source: l, Desc: published, DiffID: diffID, SourceDiffID: srcDiffID, State: StateShared, Origin: OriginRegistry, variant: variant}
	notLossless := published.Annotations[labels.NotLosslessAnnotation]
	if notLossless != "" {
		if !trusted {
			return nil, fmt.Errorf("%s is not lossless (%s): only a lossless conversion can be checked against its source: %w", published.Digest, notLossless, errdefs.ErrInvalidArgument)
		}
		r.NotLossless = []string{notLossless}
		if err := w.checkLossless(l, r.NotLossless); err != nil {
			return nil, err
		}
	}
	if k, ok := lc.(DiffIDKeeper); ok && k.KeepsDiffID() && diffID != srcDiffID {
		return nil, fmt.Errorf("%s uncompresses to %s, but %s keeps the source's tar (%s): %w", published.Digest, diffID, variant, srcDiffID, errdefs.ErrInvalidArgument)
	}
	if u := published.Annotations[labels.Uncompressed]; u != "" && u != diffID.String() {
		return nil, fmt.Errorf("%s is annotated %s uncompressed, but its config says %s: %w", published.Digest, u, diffID, errdefs.ErrInvalidArgument)
	}
	if trusted { // verified layers are linked once checked
		w.linkShared(ctx, r)
	}
	return r, nil
}

// keptAnnotations reports whether a kept layer's published annotations are
// its source's, but for the TOC digest an eStargz layer kept as it is may
// gain (which a lazy snapshotter checks against the TOC itself).
func keptAnnotations(src, published map[string]string) bool {
	for k, v := range published {
		if src[k] != v && k != labels.TOCDigestAnnotation {
			return false
		}
	}
	for k := range src {
		if _, ok := published[k]; !ok {
			return false
		}
	}
	return true
}

func (w *imageWalk) local(ctx context.Context, d digest.Digest) bool {
	_, err := w.c.cs.Info(ctx, d)
	return err == nil
}

// readSharedJSON reads a published blob as JSON.
func readSharedJSON(ctx context.Context, sc SharedConversion, desc ocispec.Descriptor, v any) error {
	b, err := sc.Read(ctx, desc)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %v: %w", desc.Digest, err, errdefs.ErrInvalidArgument)
	}
	return nil
}
