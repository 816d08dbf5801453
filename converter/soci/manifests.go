//go:build cgo

package soci

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/options"
	"github.com/lazyconv/lazyconv/labels"
)

// Manifests is the soci format as the converter runs it on each image
// manifest: the layers kept, a zTOC per gzip layer of at least the minimum
// and the SOCI index v2 of them, named by the manifest's
// com.amazon.soci.index-digest annotation (Bind then lists the index in
// the image index).
func Manifests(o Options) converter.ManifestFormat { return manifests{o} }

type manifests struct{ o Options }

// Variant is "soci" at soci's defaults, with the span size and minimum
// layer size when they are not.
func (m manifests) Variant() string { return options.Variant("soci", m.o, DefaultOptions()) }

// Reads reports whether the layer gets a zTOC (the others are not read).
func (m manifests) Reads(layer ocispec.Descriptor) bool { return m.o.indexes(layer) }

// Cached reports whether every layer that gets a zTOC has one here.
func (m manifests) Cached(ctx context.Context, cs content.Store, layers []ocispec.Descriptor) bool {
	for _, l := range layers {
		if _, _, ok := cachedZTOC(ctx, cs, l, m.o); m.o.indexes(l) && !ok {
			return false
		}
	}
	return true
}

// Annotate builds the zTOCs and the SOCI index of the layers.
func (m manifests) Annotate(ctx context.Context, cs content.Store, layers []ocispec.Descriptor) (map[string]string, []ocispec.Descriptor, error) {
	idx, err := layersIndex(ctx, cs, layers, m.o)
	if isEmpty(err) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	return map[string]string{soci.ImageAnnotationSociIndexDigest: idx.Digest.String()}, []ocispec.Descriptor{idx}, nil
}

// Adopt takes the SOCI index a published manifest names, once it is the
// index lazyconv (and soci) writes for these layers at these options:
// one zTOC per layer that gets one, in order, with soci's annotations, and
// nothing else. Its zTOCs are fetched, and unless the publisher is trusted
// each must be, byte for byte, the zTOC built here from its layer (the
// output is deterministic); they are then linked from their layers as if
// built here. A trusted publisher's zTOCs are never linked: only the
// adopted manifest (marked unverified) names them. For SOCI an untrusted publication saves no work (building a
// zTOC costs what checking it does); a trusted one saves reading the layers.
func (m manifests) Adopt(ctx context.Context, cs content.Store, layers []ocispec.Descriptor, diffIDs []digest.Digest, published map[string]string,
	sc converter.SharedConversion) (map[string]string, []ocispec.Descriptor, error) {
	invalid := func(format string, args ...any) (map[string]string, []ocispec.Descriptor, error) {
		return nil, nil, fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
	}
	named := published[soci.ImageAnnotationSociIndexDigest]
	if named == "" {
		return invalid("it names no SOCI index")
	}
	d, err := digest.Parse(named)
	if err != nil {
		return invalid("it names the SOCI index %q: %v", named, err)
	}
	desc, err := sc.Resolve(ctx, d)
	if err != nil {
		return nil, nil, err
	}
	if desc.MediaType != ocispec.MediaTypeImageManifest {
		return invalid("its SOCI index %s is a %q, not an OCI manifest", d, desc.MediaType)
	}
	b, err := sc.Read(ctx, desc)
	if err != nil {
		return nil, nil, err
	}
	var idx ocispec.Manifest
	if err := json.Unmarshal(b, &idx); err != nil {
		return invalid("its SOCI index %s: %v", d, err)
	}
	var indexed []int // the layers that get a zTOC, in order
	for i, l := range layers {
		if m.o.indexes(l) {
			indexed = append(indexed, i)
		}
	}
	if len(idx.Layers) != len(indexed) {
		return invalid("its SOCI index lists %d zTOCs; %d layers get one at %s", len(idx.Layers), len(indexed), m.Variant())
	}
	ztocs := make([]ocispec.Descriptor, len(indexed))
	for j, z := range idx.Layers {
		if err := checkZTOCDescriptor(z); err != nil {
			return nil, nil, err
		}
		ztocs[j] = *annotated(ocispec.Descriptor{MediaType: soci.SociLayerMediaType, Digest: z.Digest, Size: z.Size}, layers[indexed[j]], m.o)
	}
	// The index must be, byte for byte, the one written for these zTOCs:
	// this layer order, soci's annotations, nothing else.
	if _, mine, err := marshalIndex(ztocs); err != nil {
		return nil, nil, err
	} else if digest.FromBytes(mine) != d {
		return invalid("its SOCI index %s is not the index of its zTOCs for these layers", d)
	}
	for j, z := range ztocs {
		l := layers[indexed[j]]
		if err := sc.Fetch(ctx, z, nil); err != nil {
			return nil, nil, fmt.Errorf("fetching the zTOC %s of layer %s: %w", z.Digest, l.Digest, err)
		}
		if !sc.Trusted {
			// Building the zTOC here is one zlib pass, cheaper than replaying
			// every span in Go (VerifyZTOC, which image verify runs): the
			// published one must be the same bytes.
			if _, err := verifyByBuilding(ctx, cs, l, diffIDs[indexed[j]], z, m.o, 0); err != nil {
				return nil, nil, err
			}
		}
		if sc.Trusted {
			continue // never linked: a later conversion here builds its own
		}
		if err := labels.Set(ctx, cs, l.Digest, map[string]string{labels.VariantKey(m.o.variant()): z.Digest.String()}); err != nil {
			return nil, nil, err
		}
	}
	written, err := Index(ctx, cs, ztocs)
	if err != nil {
		return nil, nil, err
	}
	return map[string]string{soci.ImageAnnotationSociIndexDigest: written.Digest.String()}, []ocispec.Descriptor{written}, nil
}

var _ converter.ManifestFormat = manifests{}

// checkZTOCDescriptor refuses an entry of a SOCI index that is not a zTOC
// within the size a check reads, before anything is fetched for it.
func checkZTOCDescriptor(z ocispec.Descriptor) error {
	if z.MediaType != soci.SociLayerMediaType || z.Size <= 0 || z.Size > maxZTOCBytes || z.Digest.Validate() != nil {
		return fmt.Errorf("the SOCI index lists %s (%q, %d bytes), which is no zTOC here: %w", z.Digest, z.MediaType, z.Size, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Verifier checks the zTOCs of SOCI-enabled manifests against their layers
// (VerifyZTOC), at the span size each zTOC's index entry gives.
func Verifier() converter.ManifestVerifier { return verifier{} }

type verifier struct{}

// Claims reports whether m names a SOCI index.
func (verifier) Claims(m ocispec.Manifest) bool {
	return m.Annotations[soci.ImageAnnotationSociIndexDigest] != ""
}

// VerifyManifest reads m's SOCI index (which must be here: it is listed in
// the SOCI-enabled image's index) and checks each zTOC it lists against its
// layer in m.
func (verifier) VerifyManifest(ctx context.Context, cs content.Store, m ocispec.Manifest, diffIDs []digest.Digest,
	ensure func(ctx context.Context, desc ocispec.Descriptor) error) ([]converter.ManifestCheck, error) {
	d, err := digest.Parse(m.Annotations[soci.ImageAnnotationSociIndexDigest])
	if err != nil {
		return nil, fmt.Errorf("the manifest names the SOCI index %q: %v: %w", m.Annotations[soci.ImageAnnotationSociIndexDigest], err, errdefs.ErrInvalidArgument)
	}
	info, err := cs.Info(ctx, d)
	if err != nil {
		return nil, fmt.Errorf("the SOCI index %s: %w", d, err)
	}
	var idx ocispec.Manifest
	if _, err := converter.ReadDocument(ctx, cs, &idx, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: d, Size: info.Size}); err != nil {
		return nil, err
	}
	if idx.ArtifactType != soci.SociIndexArtifactTypeV2 && idx.Config.MediaType != soci.SociIndexArtifactTypeV2 {
		return nil, fmt.Errorf("%s is no SOCI index v2 (%q): %w", d, idx.ArtifactType, errdefs.ErrInvalidArgument)
	}
	var out []converter.ManifestCheck
	for _, z := range idx.Layers {
		c := converter.ManifestCheck{Layer: digest.Digest(z.Annotations[soci.IndexAnnotationImageLayerDigest]), Checked: z.Digest}
		c.Err = func() error {
			pos := slices.IndexFunc(m.Layers, func(l ocispec.Descriptor) bool { return l.Digest == c.Layer })
			if pos < 0 || pos >= len(diffIDs) {
				return fmt.Errorf("zTOC %s is of %q, no layer of the image: %w", z.Digest, c.Layer, errdefs.ErrInvalidArgument)
			}
			span, err := strconv.ParseInt(z.Annotations[soci.IndexAnnotationSociSpanSize], 10, 64)
			if err != nil {
				return fmt.Errorf("zTOC %s gives no span size: %w", z.Digest, errdefs.ErrInvalidArgument)
			}
			if err := checkZTOCDescriptor(z); err != nil {
				return err
			}
			layer := m.Layers[pos]
			for _, b := range []ocispec.Descriptor{layer, z} {
				if err := ensure(ctx, b); err != nil {
					return err
				}
			}
			rep, err := VerifyZTOC(ctx, cs, layer, diffIDs[pos], z, Options{SpanSize: span})
			c.Entries, c.Files, c.Bytes = int64(rep.Spans), int64(rep.Files), rep.Bytes
			return err
		}()
		if err := context.Cause(ctx); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}
