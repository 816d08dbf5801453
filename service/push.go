package service

import (
	"context"
	"fmt"
	"strings"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
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
		tmp := fmt.Sprintf("%s-lazyconv-push-%s", local, format)
		err := s.ConvertImage(ctx, &api.ConvertRequest{
			Source: local, Target: tmp, Format: format, Oci: true,
			Platforms: req.GetPlatforms(), AllPlatforms: req.GetAllPlatforms(), Registry: req.GetRegistry(),
		}, func(*api.ConvertEvent) error { return nil })
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
	return &api.PushResponse{Target: descriptor(t.MediaType, t.Digest.String(), t.Size, t.Annotations)}, nil
}
