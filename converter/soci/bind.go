//go:build cgo

package soci

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/converter"
)

// Bind makes target into a SOCI-enabled image (SOCI index manifest v2, as
// soci-snapshotter v0.10+ reads it): every manifest it lists (or the one it
// is) is written again as an OCI manifest annotated with the digest of its
// SOCI index (com.amazon.soci.index-digest), and the image index lists the
// SOCI indexes beside the manifests, each with its platform and the digest
// of its manifest (com.amazon.soci.image-manifest-digest). Layers are the
// source's, untouched. A manifest none of whose layers gets a zTOC gets no
// SOCI index; an image where none does is refused (InvalidArgument).
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
		sociIndex, err := ManifestIndex(ctx, cs, *desc, o)
		if errdefs.IsNotFound(err) {
			continue // a platform not here
		}
		if err != nil && !isEmpty(err) {
			return ocispec.Descriptor{}, err
		}
		var m ocispec.Manifest
		lbls, err2 := converter.ReadDocument(ctx, cs, &m, *desc)
		if err2 != nil {
			return ocispec.Descriptor{}, err2
		}
		m.MediaType, m.Config.MediaType = ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageConfig
		if err == nil {
			if m.Annotations == nil {
				m.Annotations = map[string]string{}
			}
			m.Annotations[soci.ImageAnnotationSociIndexDigest] = sociIndex.Digest.String()
		}
		written, err3 := put(ctx, cs, m, gcLabels(lbls))
		if err3 != nil {
			return ocispec.Descriptor{}, err3
		}
		desc.Digest, desc.Size, desc.MediaType, desc.Annotations = written.Digest, written.Size, ocispec.MediaTypeImageManifest, m.Annotations
		if err == nil {
			sociIndex.Platform = desc.Platform
			sociIndex.Annotations = map[string]string{soci.IndexAnnotationImageManifestDigest: desc.Digest.String()}
			indexes = append(indexes, sociIndex)
		}
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

// gcLabels are the garbage collection references of a document's labels:
// what a rewritten copy of it needs.
func gcLabels(lbls map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range lbls {
		if strings.HasPrefix(k, "containerd.io/gc.ref.") {
			out[k] = v
		}
	}
	return out
}

// put writes a document as JSON with GC labels (those of the document it
// replaces, for a manifest).
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
