package service

import (
	"context"
	"crypto/rand"
	"fmt"
	"strings"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/labels"
	"github.com/lazyconv/lazyconv/remote"
)

// Push is the gRPC handler.
func (s *Service) Push(ctx context.Context, req *api.PushRequest) (*api.PushResponse, error) {
	resp, err := s.PushImage(ctx, req)
	return resp, errgrpc.ToGRPC(err)
}

// PushImage pushes an image from the store through containerd's pusher, which
// mounts blobs across repositories when their distribution-source labels name
// the target registry (lazyconv never puts its source's labels on a converted
// blob, so only blobs known to be there are mounted).
func (s *Service) PushImage(ctx context.Context, req *api.PushRequest) (*api.PushResponse, error) {
	ctx, err := requestContext(ctx)
	if err != nil {
		return nil, err
	}
	if req.GetRef() == "" {
		return nil, fmt.Errorf("ref is required: %w", errdefs.ErrInvalidArgument)
	}
	local := req.GetLocal()
	if local == "" {
		local = req.GetRef()
	}
	pm, err := platformMatcher(req.GetPlatforms(), req.GetAllPlatforms())
	if err != nil {
		return nil, err
	}
	if format := req.GetForceCompression(); format != "" {
		// A name of this push's own (concurrent pushes do not collide),
		// labelled temporary (no rule converts it).
		tmp := fmt.Sprintf("%s-lazyconv-push-%s-%s", local, format, rand.Text()[:12])
		err := s.convertImage(ctx, &api.ConvertRequest{
			Source: local, Target: tmp, Format: format, Oci: true, Overwrite: true,
			Platforms: req.GetPlatforms(), AllPlatforms: req.GetAllPlatforms(), Registry: sameRegistry(req.GetRegistry(), req.GetRef(), local),
		}, func(*api.ConvertEvent) error { return nil }, conversionPin{labels: map[string]string{labels.Temporary: "push"}})
		if err != nil {
			return nil, fmt.Errorf("converting %s to %s before the push: %w", local, format, err)
		}
		defer s.is.Delete(context.WithoutCancel(ctx), tmp) //nolint:errcheck // a leftover name is harmless
		local = tmp
	}
	img, err := s.is.Get(ctx, local)
	if err != nil {
		return nil, err
	}
	resolver := registryOptions(req.GetRegistry()).ResolverFor(req.GetRef())
	ref := req.GetRef()
	if !strings.Contains(ref, "@") {
		ref += "@" + img.Target.Digest.String()
	}
	pusher, err := resolver.Pusher(ctx, ref)
	if err != nil {
		return nil, err
	}
	if err := remotes.PushContent(ctx, pusher, img.Target, s.cs, nil, pm, nil); err != nil {
		return nil, fmt.Errorf("pushing %s: %w", req.GetRef(), err)
	}
	t := img.Target
	resp := &api.PushResponse{Target: descriptor(t.MediaType, t.Digest.String(), t.Size, t.Annotations)}
	resp.Published, resp.Warnings = s.publishConversions(ctx, resolver, req.GetRef(), t, pm)
	return resp, nil
}

// publishConversions publishes, in the repository just pushed to, each
// pushed manifest that lazyconv converted as a referrer of its source
// manifest, so that other nodes converting that source adopt it. It
// returns the referrers ("host/repository@digest"), and warnings for those
// it could not publish: the push itself succeeded.
func (s *Service) publishConversions(ctx context.Context, resolver remotes.Resolver, ref string, target ocispec.Descriptor, pm platforms.MatchComparer) (published, warnings []string) {
	src, err := remote.SourceOf(ref)
	if err != nil {
		return nil, nil
	}
	var manifests []ocispec.Descriptor
	collect := images.HandlerFunc(func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		if images.IsManifestType(desc.MediaType) {
			manifests = append(manifests, desc)
			return nil, nil
		}
		return images.Children(ctx, s.cs, desc)
	})
	if err := images.Walk(ctx, images.FilterPlatforms(collect, pm), target); err != nil {
		return nil, []string{fmt.Sprintf("listing the manifests to publish: %v", err)}
	}
	for _, m := range manifests {
		info, err := s.cs.Info(ctx, m.Digest)
		if err != nil {
			continue
		}
		from, variant := info.Labels[labels.ConvertedFrom], info.Labels[labels.ConvertedVariant]
		if from == "" || variant == "" {
			continue // not a conversion of lazyconv's
		}
		if where := info.Labels[labels.AdoptedUnverified]; where != "" {
			continue // adopted unread from a trusted publisher (where): not this node's to vouch for
		}
		subject, err := remote.ManifestOf(ctx, s.cs, digest.Digest(from))
		if err == nil {
			var desc ocispec.Descriptor
			desc, err = remote.PublishReferrer(ctx, resolver, src, remote.ConversionReferrer(subject, variant, m.Digest), "")
			if err == nil {
				published = append(published, src.Ref(desc.Digest))
				continue
			}
		}
		text := fmt.Sprintf("publishing the %s conversion %s of %s: %v", variant, m.Digest, from, err)
		log.G(ctx).Warn("lazyconv: " + text)
		warnings = append(warnings, text)
	}
	return published, warnings
}

// sameRegistry returns the registry options given for the registry of ref
// when other names the same registry, and none otherwise: credentials and
// plain HTTP given for a push's target never go to the registry another
// image's layers come from.
func sameRegistry(opts *api.RegistryOptions, ref, other string) *api.RegistryOptions {
	a, errA := remote.SourceOf(ref)
	b, errB := remote.SourceOf(other)
	if errA != nil || errB != nil || a.Host != b.Host {
		return nil
	}
	return opts
}
