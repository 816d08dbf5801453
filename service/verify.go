package service

import (
	"context"
	"fmt"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
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
	handler := images.HandlerFunc(func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		children, err := images.Children(ctx, s.cs, desc)
		if images.IsManifestType(desc.MediaType) {
			for _, c := range children {
				if images.IsLayerType(c.MediaType) {
					layers = append(layers, layerOf{c, desc})
				}
			}
			return nil, err
		}
		return children, err
	})
	if err := images.Walk(ctx, images.FilterPlatforms(handler, pm), img.Target); err != nil {
		return nil, err
	}
	resp := &api.VerifyResponse{}
	resolver := remote.RegistryOptions{}.ResolverFor(req.GetRef())
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
