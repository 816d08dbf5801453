package remote

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"sync/atomic"
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
	fetcher  *Fetcher
	imageRef string
	trusted  Publishers
}

// NewSharedConversions looks in the repository of imageRef (the name being
// converted, when its manifest was pulled from there) and in those of the
// manifest's distribution sources that trusted names, through resolver;
// fetcher fetches the layers of a conversion to verify.
func NewSharedConversions(cs content.Store, resolver remotes.Resolver, fetcher *Fetcher, imageRef string, trusted Publishers) *SharedConversions {
	return &SharedConversions{cs: cs, resolver: resolver, fetcher: fetcher, imageRef: imageRef, trusted: trusted}
}

// Lookup lists the published conversions of manifest to variant whose
// converted manifest is in the same repository, from the first repository
// that has any. A manifest known in no registry has none.
func (s *SharedConversions) Lookup(ctx context.Context, manifest ocispec.Descriptor, variant string) ([]converter.SharedConversion, error) {
	info, _ := s.cs.Info(ctx, manifest.Digest)
	var errs []error
	for _, src := range s.repositories(info) {
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

// repositories are the ones asked about a manifest (info): the repository
// of the name being converted, with its port, when the manifest was pulled
// from it (an imported image, which has no distribution sources, is asked
// nowhere, whatever its name says); then any other repository the
// manifest's distribution sources name that is a trusted publisher. A
// repository that merely served the same manifest is never asked: anyone
// who can push there could publish a conversion.
func (s *SharedConversions) repositories(info content.Info) []Source {
	var out []Source
	own, err := SourceOf(s.imageRef)
	if err == nil && Pulled(info, own) {
		out = append(out, own)
	}
	for _, src := range Sources(info) {
		if len(out) > 0 && src.labels(own) {
			continue
		}
		if s.trusted.Trusts(src) {
			out = append(out, src)
		}
	}
	return out
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
			Resolve: func(ctx context.Context, d digest.Digest) (ocispec.Descriptor, error) {
				ctx, cancel := context.WithTimeout(ctx, LookupTimeout)
				defer cancel()
				_, found, err := s.resolver.Resolve(ctx, src.Ref(d))
				if err != nil {
					return ocispec.Descriptor{}, fmt.Errorf("resolving %s: %w", src.Ref(d), err)
				}
				if found.Digest != d {
					return ocispec.Descriptor{}, fmt.Errorf("%s resolves to %s: %w", src.Ref(d), found.Digest, errdefs.ErrInvalidArgument)
				}
				return found, nil
			},
			Adopt:   func(ctx context.Context) error { return AddSource(ctx, s.cs, desc.Digest, src) },
			Trusted: s.trusted.Trusts(src),
			Fetch: func(ctx context.Context, d ocispec.Descriptor, bytesIn *atomic.Int64) error {
				d.URLs = nil // fetched from the repository, nowhere else
				return s.fetcher.EnsureFrom(ctx, s.resolver, d, src, bytesIn)
			},
		})
	}
	return out, nil
}

var _ converter.SharedConversions = (*SharedConversions)(nil)

// Publishers are the repositories whose published conversions are adopted
// without reading their layers: patterns on "host/repository" (the host
// with its port, if any) in path.Match's syntax, where "*" does not cross a
// "/"; a pattern ending in "/**" also matches every repository below it.
type Publishers []string

// Validate reports a malformed pattern with ErrInvalidArgument.
func (p Publishers) Validate() error {
	for _, pattern := range p {
		if _, err := path.Match(strings.TrimSuffix(pattern, "/**"), ""); err != nil || pattern == "" {
			return fmt.Errorf("trusted_publishers: bad pattern %q: %w", pattern, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// Trusts reports whether src matches a pattern.
func (p Publishers) Trusts(src Source) bool {
	name := src.Host + "/" + src.Repository
	for _, pattern := range p {
		if prefix, ok := strings.CutSuffix(pattern, "/**"); ok {
			if ok, _ := path.Match(prefix, name); ok {
				return true
			}
			for dir := path.Dir(name); dir != "." && dir != "/"; dir = path.Dir(dir) {
				if ok, _ := path.Match(prefix, dir); ok {
					return true
				}
			}
			continue
		}
		if ok, _ := path.Match(pattern, name); ok {
			return true
		}
	}
	return false
}
