package service

import (
	"context"
	"fmt"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/stargz"
	"github.com/lazyconv/lazyconv/remote"
)

// Verify is the gRPC handler.
func (s *Service) Verify(ctx context.Context, req *api.VerifyRequest) (*api.VerifyResponse, error) {
	resp, err := s.VerifyImage(ctx, req)
	return resp, errgrpc.ToGRPC(err)
}

// VerifyImage verifies every layer of an image for the requested platforms
// where the blobs are (stargz.Verify: the TOC against its digest annotation,
// every file against the TOC). A layer that fails is reported with its
// reason; the call itself fails only when the image cannot be walked.
func (s *Service) VerifyImage(ctx context.Context, req *api.VerifyRequest) (*api.VerifyResponse, error) {
	ctx, err := requestContext(ctx)
	if err != nil {
		return nil, err
	}
	ctx = s.conversionContext(ctx)
	if req.GetRef() == "" {
		return nil, fmt.Errorf("ref is required: %w", errdefs.ErrInvalidArgument)
	}
	pm, err := platformMatcher(req.GetPlatforms(), req.GetAllPlatforms())
	if err != nil {
		return nil, err
	}
	img, err := s.is.Get(ctx, req.GetRef())
	if err != nil {
		return nil, err
	}
	// Layers not here (a lazy pull, a conversion adopted from the registry)
	// are fetched from where their manifest came from.
	type layerOf struct{ layer, manifest ocispec.Descriptor }
	var layers []layerOf
	var claimed []claimedManifest
	handler := images.HandlerFunc(func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		if !images.IsManifestType(desc.MediaType) {
			return images.Children(ctx, s.cs, desc)
		}
		var m ocispec.Manifest // read once: for a format's claim and for its layers
		if _, err := converter.ReadDocument(ctx, s.cs, &m, desc); err != nil {
			return nil, err
		}
		if c, ok := s.claim(ctx, desc, m); ok {
			claimed = append(claimed, c)
			return nil, nil
		}
		for _, l := range m.Layers {
			if images.IsLayerType(l.MediaType) {
				layers = append(layers, layerOf{l, desc})
			}
		}
		return nil, nil
	})
	if err := images.Walk(ctx, images.FilterPlatforms(handler, pm), img.Target); err != nil {
		return nil, err
	}
	resp := &api.VerifyResponse{}
	resolver := remote.RegistryOptions{}.ResolverFor(req.GetRef())
	for _, c := range claimed {
		ensure := func(ctx context.Context, desc ocispec.Descriptor) error {
			return s.fetcher.Ensure(ctx, resolver, desc, c.desc, req.GetRef(), nil)
		}
		checks, err := c.verifier.VerifyManifest(ctx, s.cs, c.manifest, c.diffIDs, ensure)
		if err != nil {
			if ctxErr := ctx.Err(); ctxErr != nil {
				return nil, ctxErr
			}
			resp.Layers = append(resp.Layers, &api.LayerVerification{Digest: c.desc.Digest.String(), Error: err.Error()})
			continue
		}
		for _, ch := range checks {
			lv := &api.LayerVerification{Digest: ch.Layer.String(), TocDigest: ch.Checked.String(), Entries: ch.Entries, Files: ch.Files, Bytes: ch.Bytes}
			if ch.Err != nil {
				lv = &api.LayerVerification{Digest: ch.Layer.String(), Error: ch.Err.Error()}
			}
			resp.Layers = append(resp.Layers, lv)
		}
	}
	for _, lm := range layers {
		l := lm.layer
		lv := &api.LayerVerification{Digest: l.Digest.String()}
		err := s.fetcher.Ensure(ctx, resolver, l, lm.manifest, req.GetRef(), nil)
		var rep stargz.Report
		if err == nil {
			rep, err = stargz.Verify(ctx, s.cs, l)
		}
		if err != nil {
			if ctxErr := ctx.Err(); ctxErr != nil {
				return nil, ctxErr
			}
			lv.Error = err.Error()
		} else {
			lv.TocDigest, lv.Entries, lv.Files, lv.Bytes = rep.TOCDigest.String(), int64(rep.Entries), int64(rep.Files), rep.Bytes
		}
		resp.Layers = append(resp.Layers, lv)
	}
	return resp, nil
}

// claimedManifest is a manifest that a format's verifier checks (what the
// format added to it, SOCI's zTOCs) in place of a check of each layer.
type claimedManifest struct {
	desc     ocispec.Descriptor
	manifest ocispec.Manifest
	diffIDs  []digest.Digest
	verifier converter.ManifestVerifier
}

// claim finds the verifier of a format that claims the manifest m (desc).
func (s *Service) claim(ctx context.Context, desc ocispec.Descriptor, m ocispec.Manifest) (claimedManifest, bool) {
	for _, f := range s.formats.Formats {
		v := f.Verifier()
		if v == nil || !v.Claims(m) {
			continue
		}
		diffIDs, err := images.RootFS(ctx, s.cs, m.Config)
		if err != nil {
			return claimedManifest{}, false
		}
		return claimedManifest{desc: desc, manifest: m, diffIDs: diffIDs, verifier: v}, true
	}
	return claimedManifest{}, false
}
