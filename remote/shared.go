package remote

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/labels"
)

// ConversionReferrer is the referrer announcing that subject was converted
// to variant, giving the converted manifest (in the same repository).
func ConversionReferrer(subject ocispec.Descriptor, variant string, converted digest.Digest) Referrer {
	return Referrer{Subject: subject, ArtifactType: labels.ConversionArtifactType, Annotations: map[string]string{
		labels.VariantAnnotation:           variant,
		labels.ConvertedManifestAnnotation: converted.String(),
	}}
}

// LookupTimeout bounds asking one repository for the conversions of a
// manifest, so that an unreachable registry delays a conversion by no more.
var LookupTimeout = 15 * time.Second

// maxCandidates bounds the published conversions of one variant tried: a
// repository listing more gets its first ones tried, not one request each.
const maxCandidates = 4

// SharedConversions finds conversions published by other nodes in the
// registry a source image came from: the referrers of its manifest.
type SharedConversions struct {
	cs       content.Store
	resolver remotes.Resolver
	imageRef string
}

// NewSharedConversions looks in the repository of imageRef (the image's
// name, when it names a registry) and in those its manifests were pulled
// from (their distribution-source labels), through resolver.
func NewSharedConversions(cs content.Store, resolver remotes.Resolver, imageRef string) *SharedConversions {
	return &SharedConversions{cs: cs, resolver: resolver, imageRef: imageRef}
}

// Lookup lists the published conversions of manifest to variant whose
// converted manifest is in the same repository, from the first repository
// that has any. A manifest known in no registry has none.
func (s *SharedConversions) Lookup(ctx context.Context, manifest ocispec.Descriptor, variant string) ([]converter.SharedConversion, error) {
	info, _ := s.cs.Info(ctx, manifest.Digest)
	sources := Repositories(s.imageRef, info)
	var errs []error
	for _, src := range sources {
		found, err := s.lookupIn(ctx, src, manifest.Digest, variant)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if len(found) > 0 {
			return found, nil
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return nil, nil
}

func (s *SharedConversions) lookupIn(ctx context.Context, src Source, subject digest.Digest, variant string) ([]converter.SharedConversion, error) {
	ctx, cancel := context.WithTimeout(ctx, LookupTimeout)
	defer cancel()
	listed, err := ListReferrers(ctx, s.resolver, src, subject, labels.ConversionArtifactType)
	if err != nil {
		return nil, err
	}
	var out []converter.SharedConversion
	for _, r := range listed {
		if len(out) == maxCandidates {
			break
		}
		if r.ArtifactType != labels.ConversionArtifactType || r.Annotations[labels.VariantAnnotation] != variant {
			continue
		}
		converted, err := digest.Parse(r.Annotations[labels.ConvertedManifestAnnotation])
		if err != nil {
			continue
		}
		_, desc, err := s.resolver.Resolve(ctx, src.Ref(converted))
		if errdefs.IsNotFound(err) {
			continue // announced, but not there (deleted since)
		}
		if err != nil {
			return nil, fmt.Errorf("resolving %s: %w", src.Ref(converted), err)
		}
		if desc.Digest != converted {
			continue
		}
		out = append(out, converter.SharedConversion{
			Manifest: desc,
			Where:    src.Host + "/" + src.Repository,
			Read: func(ctx context.Context, d ocispec.Descriptor) ([]byte, error) {
				ctx, cancel := context.WithTimeout(ctx, LookupTimeout)
				defer cancel()
				return ReadBlob(ctx, s.resolver, src, d, MaxManifestBytes)
			},
			Adopt: func(ctx context.Context) error { return AddSource(ctx, s.cs, desc.Digest, src) },
		})
	}
	return out, nil
}

var _ converter.SharedConversions = (*SharedConversions)(nil)
