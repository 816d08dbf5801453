//go:build cgo

package soci

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/converter"
)

// Bind makes target, whose manifests the converter annotated with their
// SOCI indexes (Manifests), into a SOCI-enabled image (SOCI index manifest
// v2, as soci-snapshotter v0.10+ reads it): an image index listing, beside
// each manifest (its descriptor carrying the manifest's annotations, the
// digest of its SOCI index among them), that SOCI index with the
// manifest's platform and digest (com.amazon.soci.image-manifest-digest).
// Layers are the source's, untouched. An image none of whose manifests has
// a SOCI index is refused (InvalidArgument): no layer was large enough.
func Bind(ctx context.Context, cs content.Store, target ocispec.Descriptor, o Options) (ocispec.Descriptor, error) {
	var idx ocispec.Index
	switch {
	case images.IsIndexType(target.MediaType):
		if _, err := converter.ReadDocument(ctx, cs, &idx, target); err != nil {
			return ocispec.Descriptor{}, err
		}
		idx.MediaType = ocispec.MediaTypeImageIndex
	case images.IsManifestType(target.MediaType):
		ps, err := images.Platforms(ctx, cs, target)
		if err != nil || len(ps) == 0 {
			return ocispec.Descriptor{}, fmt.Errorf("the platform of %s: %v: %w", target.Digest, err, errdefs.ErrInvalidArgument)
		}
		target.Platform = &ps[0]
		idx = ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex,
			Manifests: []ocispec.Descriptor{target}}
	default:
		return ocispec.Descriptor{}, fmt.Errorf("%s is no image (%s): %w", target.Digest, target.MediaType, errdefs.ErrInvalidArgument)
	}
	var indexes []ocispec.Descriptor
	for i := range idx.Manifests {
		desc := &idx.Manifests[i]
		if !images.IsManifestType(desc.MediaType) || desc.ArtifactType != "" {
			continue // nested indexes, attestations, SOCI indexes: listed as they are
		}
		var m ocispec.Manifest
		if _, err := converter.ReadDocument(ctx, cs, &m, *desc); errdefs.IsNotFound(err) {
			continue // a platform not here
		} else if err != nil {
			return ocispec.Descriptor{}, err
		}
		named, err := digest.Parse(m.Annotations[soci.ImageAnnotationSociIndexDigest])
		if err != nil {
			continue // no layer of this manifest gets a zTOC
		}
		info, err := cs.Info(ctx, named)
		if err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("the SOCI index of %s: %w", desc.Digest, err)
		}
		desc.Annotations = m.Annotations
		indexes = append(indexes, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: named, Size: info.Size,
			ArtifactType: soci.SociIndexArtifactTypeV2, Platform: desc.Platform,
			Annotations: map[string]string{soci.IndexAnnotationImageManifestDigest: desc.Digest.String()}})
	}
	if len(indexes) == 0 {
		return ocispec.Descriptor{}, fmt.Errorf("no layer of the image is a gzip layer of at least %d bytes, so it gets no zTOC: %w",
			o.MinLayerSize, errdefs.ErrInvalidArgument)
	}
	idx.Manifests = append(idx.Manifests, indexes...)
	gc := map[string]string{}
	for i, d := range idx.Manifests {
		gc[fmt.Sprintf("containerd.io/gc.ref.content.m.%d", i)] = d.Digest.String()
	}
	out, err := put(ctx, cs, idx, gc)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	out.MediaType = ocispec.MediaTypeImageIndex
	return out, nil
}

func isEmpty(err error) bool { return errors.Is(err, soci.ErrEmptyIndex) }

// put writes a document as JSON with GC labels.
func put(ctx context.Context, cs content.Store, doc any, lbls map[string]string) (ocispec.Descriptor, error) {
	b, err := json.Marshal(doc)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	desc := ocispec.Descriptor{Digest: digest.FromBytes(b), Size: int64(len(b))}
	if err := content.WriteBlob(ctx, cs, "lazyconv-soci-"+desc.Digest.Encoded(), bytes.NewReader(b), desc,
		content.WithLabels(lbls)); err != nil && !errdefs.IsAlreadyExists(err) {
		return ocispec.Descriptor{}, err
	}
	return desc, nil
}
