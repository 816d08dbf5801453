package converter

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ManifestFormat is a format that keeps every layer as it is and adds to
// each image manifest what it builds from the layers, named by the
// manifest's annotations (SOCI: a zTOC per layer and an index of them).
// Its manifests are conversions of their sources like any other format's:
// labelled with their source and variant, published, and adopted from a
// registry only once what they add checks out against the layers.
type ManifestFormat interface {
	// Variant names the format with every option that changes its output.
	Variant() string
	// Reads reports whether the format reads this layer's blob (a layer it
	// reads not is never fetched for it).
	Reads(layer ocispec.Descriptor) bool
	// Cached reports whether what Annotate builds for these layers is
	// already here (a registry is then not asked for it).
	Cached(ctx context.Context, cs content.Store, layers []ocispec.Descriptor) bool
	// Annotate builds what the format adds to a manifest with these
	// layers, writing it to cs under ctx's lease, and returns the
	// annotations that name it and the blobs they name (none when the
	// manifest gets nothing).
	Annotate(ctx context.Context, cs content.Store, layers []ocispec.Descriptor) (map[string]string, []ocispec.Descriptor, error)
	// Adopt checks what a conversion published in sc adds (the published
	// manifest's annotations) against the layers, whose uncompressed
	// digests are diffIDs: it fetches it from sc under ctx's lease,
	// verifies it against the layers unless sc is trusted, and returns
	// what Annotate would. What does not check out is ErrInvalidArgument.
	Adopt(ctx context.Context, cs content.Store, layers []ocispec.Descriptor, diffIDs []digest.Digest, published map[string]string,
		sc SharedConversion) (map[string]string, []ocispec.Descriptor, error)
}

// annotateManifest converts an image manifest with a ManifestFormat: its
// layers are kept, and what the format adds comes from a conversion
// published in a registry that checks out, else is built here.
func (w *imageWalk) annotateManifest(ctx context.Context, desc ocispec.Descriptor, manifest ocispec.Manifest, lbls map[string]string, modified bool) (*ocispec.Descriptor, error) {
	mf := w.opts.Manifests
	variant := mf.Variant()
	if w.opts.Shared != nil && !mf.Cached(ctx, w.c.cs, manifest.Layers) {
		if out, ok := w.annotatedFromShared(ctx, desc, manifest, lbls, modified, variant); ok {
			w.keepAll(manifest.Layers)
			return out, nil
		}
	}
	if err := w.ensureLayers(ctx, desc, manifest.Layers); err != nil {
		return nil, err
	}
	ann, refs, err := mf.Annotate(ctx, w.c.cs, manifest.Layers)
	if err != nil {
		return nil, err
	}
	w.keepAll(manifest.Layers)
	return w.writeAnnotated(ctx, desc, manifest, lbls, modified, variant, ann, refs)
}

// writeAnnotated writes the manifest desc with its layers as they are and
// these annotations added, referring to refs (for garbage collection),
// labelled as a conversion of desc to variant; with no annotations it is
// the manifest with its media types converted (nil when nothing changed).
func (w *imageWalk) writeAnnotated(ctx context.Context, desc ocispec.Descriptor, manifest ocispec.Manifest, lbls map[string]string, modified bool,
	variant string, ann map[string]string, refs []ocispec.Descriptor) (*ocispec.Descriptor, error) {
	manifest.Layers = slices.Clone(manifest.Layers)
	results := make([]*LayerResult, len(manifest.Layers))
	if len(ann) == 0 {
		out, _, err := w.assemble(ctx, desc, manifest, lbls, results, modified, "")
		return out, err
	}
	manifest.Annotations = maps.Clone(manifest.Annotations)
	if manifest.Annotations == nil {
		manifest.Annotations = map[string]string{}
	}
	maps.Copy(manifest.Annotations, ann)
	lbls = maps.Clone(lbls)
	for i, r := range refs {
		lbls["containerd.io/gc.ref.content.lazyconv.annotated."+strconv.Itoa(i)] = r.Digest.String()
	}
	out, _, err := w.assemble(ctx, desc, manifest, lbls, results, true, variant)
	return out, err
}

// annotatedFromShared adopts the first published conversion of the
// manifest desc whose additions check out (ManifestFormat.Adopt) and which
// is, byte for byte, the source manifest with those additions. Anything
// wrong is a warning, and the caller builds them here.
func (w *imageWalk) annotatedFromShared(ctx context.Context, desc ocispec.Descriptor, manifest ocispec.Manifest, lbls map[string]string, modified bool,
	variant string) (*ocispec.Descriptor, bool) {
	found, err := w.opts.Shared.Lookup(ctx, desc, variant)
	if err != nil {
		w.warn(ctx, fmt.Sprintf("looking for a published %s conversion of %s: %v; converting here", variant, desc.Digest, err))
		return nil, false
	}
	for _, sc := range found {
		if sc.Manifest.MediaType != manifest.MediaType {
			continue
		}
		out, err := w.tryAnnotatedShared(ctx, desc, manifest, lbls, modified, variant, sc)
		if err == nil {
			err = sc.Adopt(ctx)
		}
		if err == nil && sc.Trusted {
			err = w.markUnverified(ctx, out.Digest, sc.Where)
		}
		if err != nil {
			w.warn(ctx, fmt.Sprintf("the %s conversion of %s published in %s (%s) is not used: %v", variant, desc.Digest, sc.Where, sc.Manifest.Digest, err))
			continue
		}
		w.mu.Lock()
		w.shared[desc.Digest] = sc.Where + "@" + sc.Manifest.Digest.String()
		w.mu.Unlock()
		return out, true
	}
	return nil, false
}

func (w *imageWalk) tryAnnotatedShared(ctx context.Context, desc ocispec.Descriptor, manifest ocispec.Manifest, lbls map[string]string, modified bool,
	variant string, sc SharedConversion) (*ocispec.Descriptor, error) {
	var published ocispec.Manifest
	if err := readSharedJSON(ctx, sc, sc.Manifest, &published); err != nil {
		return nil, err
	}
	diffIDs, err := w.diffIDs(ctx, manifest.Config, len(manifest.Layers))
	if err != nil {
		return nil, err
	}
	if !sc.Trusted { // checked against the layers, which must be here
		if err := w.ensureLayers(ctx, desc, manifest.Layers); err != nil {
			return nil, err
		}
	}
	ann, refs, err := w.opts.Manifests.Adopt(ctx, w.c.cs, manifest.Layers, diffIDs, published.Annotations, sc)
	if err != nil {
		return nil, err
	}
	out, err := w.writeAnnotated(ctx, desc, manifest, lbls, modified, variant, ann, refs)
	if err != nil {
		return nil, err
	}
	if out == nil || out.Digest != sc.Manifest.Digest {
		got := desc.Digest
		if out != nil {
			got = out.Digest
		}
		return nil, fmt.Errorf("the source with what it adds is %s, not the published manifest: %w", got, errdefs.ErrInvalidArgument)
	}
	return out, nil
}

// ensureLayers makes the layers of the manifest desc that the format reads
// local (EnsureLayer):
// a manifest format reads the layer blobs themselves, so a layer that is
// here only as its snapshot's files cannot be used.
func (w *imageWalk) ensureLayers(ctx context.Context, desc ocispec.Descriptor, layers []ocispec.Descriptor) error {
	if w.opts.EnsureLayer == nil {
		return nil
	}
	for i, l := range layers {
		if !w.opts.Manifests.Reads(l) {
			continue
		}
		if _, err := w.c.cs.Info(ctx, l.Digest); err == nil {
			continue
		}
		got, err := w.opts.EnsureLayer(ctx, l, desc, i, LayerReport{lp: w.opts.Progress.layer(l.Digest, l.Size)})
		if err != nil {
			return err
		}
		if got.Desc.Digest != l.Digest {
			return fmt.Errorf("layer %s is not here, and %s needs the blob itself, not one rebuilt from its snapshot: %w",
				l.Digest, w.opts.Manifests.Variant(), errdefs.ErrNotFound)
		}
	}
	return nil
}

// ManifestCheck is the verdict on what a manifest format added to a
// manifest for one of its layers.
type ManifestCheck struct {
	// Layer is the layer checked.
	Layer digest.Digest
	// Checked is what was checked against it (a zTOC).
	Checked digest.Digest
	// Entries, Files and Bytes count what was checked (spans, file table
	// entries, uncompressed bytes).
	Entries, Files, Bytes int64
	// Err is why it failed, nil when it passed.
	Err error
}

// ManifestVerifier checks what a manifest format added to manifests made
// anywhere (SOCI-enabled images pulled from a registry included).
type ManifestVerifier interface {
	// Claims reports whether m carries what the format adds.
	Claims(m ocispec.Manifest) bool
	// VerifyManifest checks, against each layer of m (whose uncompressed
	// digests are diffIDs), what the format added for it; ensure makes a
	// blob m's additions list local first. The error is for a manifest
	// whose additions cannot be read at all.
	VerifyManifest(ctx context.Context, cs content.Store, m ocispec.Manifest, diffIDs []digest.Digest,
		ensure func(ctx context.Context, desc ocispec.Descriptor) error) ([]ManifestCheck, error)
}
