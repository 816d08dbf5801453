package converter

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	ctdconverter "github.com/containerd/containerd/v2/core/images/converter"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

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
	// Adopt records on the local copy of the converted manifest that it
	// and its blobs are in that repository, so that its layers are fetched
	// from there on first use and mounted from there on a push.
	Adopt func(ctx context.Context) error
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
		if err != nil {
			w.warn(ctx, fmt.Sprintf("the %s conversion of %s published in %s (%s) is not used: %v", variant, desc.Digest, sc.Where, sc.Manifest.Digest, err))
			continue
		}
		for _, r := range layers {
			lp := w.opts.Progress.layer(r.Source.Digest, r.Source.Size)
			lp.setOutput(r.Desc.Digest, r.Desc.Size, r.Desc.Annotations[labels.NotLosslessAnnotation])
			lp.setOrigin(OriginRegistry)
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
		r, err := w.sharedLayer(ctx, l, published.Layers[i], converters[i], variant, cfg.RootFS.DiffIDs[positions[i]], configDiffIDs[positions[i]])
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
	return out, layers, nil
}

// sharedLayer checks one layer of a published conversion against its
// source l and returns its result (nil for a layer the plan leaves as it is).
func (w *imageWalk) sharedLayer(ctx context.Context, l, published ocispec.Descriptor, lc LayerConverter, variant string, diffID, srcDiffID digest.Digest) (*LayerResult, error) {
	if lc == nil && published.Digest != l.Digest {
		return nil, fmt.Errorf("%s should be the source layer %s: %w", published.Digest, l.Digest, errdefs.ErrInvalidArgument)
	}
	if lc == nil {
		return nil, nil
	}
	if published.Digest == l.Digest { // already in the format
		return &LayerResult{Source: l, Desc: published, DiffID: srcDiffID, SourceDiffID: srcDiffID, State: StateKept}, nil
	}
	want := lc.MediaType(l.MediaType)
	if published.MediaType != want && published.MediaType != ctdconverter.ConvertDockerMediaTypeToOCI(want) {
		return nil, fmt.Errorf("%s has media type %q, not %s's %q: %w", published.Digest, published.MediaType, variant, want, errdefs.ErrInvalidArgument)
	}
	r := &LayerResult{Source: l, Desc: published, DiffID: diffID, SourceDiffID: srcDiffID, State: StateShared, Origin: OriginRegistry, variant: variant}
	notLossless := published.Annotations[labels.NotLosslessAnnotation]
	if notLossless != "" {
		r.NotLossless = []string{notLossless}
		if err := w.checkLossless(l, r.NotLossless); err != nil {
			return nil, err
		}
	}
	if k, ok := lc.(DiffIDKeeper); ok && k.KeepsDiffID() && notLossless == "" && diffID != srcDiffID {
		return nil, fmt.Errorf("%s uncompresses to %s, but %s keeps the source's tar (%s): %w", published.Digest, diffID, variant, srcDiffID, errdefs.ErrInvalidArgument)
	}
	if u := published.Annotations[labels.Uncompressed]; u != "" && u != diffID.String() {
		return nil, fmt.Errorf("%s is annotated %s uncompressed, but its config says %s: %w", published.Digest, u, diffID, errdefs.ErrInvalidArgument)
	}
	// Where both blobs are here, the local variant cache learns the pair.
	if w.local(ctx, l.Digest) && w.local(ctx, published.Digest) {
		r.links = []labelUpdate{
			{dgst: l.Digest, labels: map[string]string{labels.VariantKey(variant): published.Digest.String(), labels.Uncompressed: srcDiffID.String()}},
			{dgst: published.Digest, labels: map[string]string{labels.VariantBackRefKey(variant): l.Digest.String(), labels.Uncompressed: diffID.String()}},
		}
	}
	return r, nil
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
