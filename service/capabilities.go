package service

import (
	"context"
	"fmt"
	"runtime"
	"slices"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/opencontainers/go-digest"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/converter/nydus"
	"github.com/lazyconv/lazyconv/converter/stargz"
	"github.com/lazyconv/lazyconv/format"
	"github.com/lazyconv/lazyconv/labels"
)

// Capabilities is the gRPC handler: every format of the table, whether it
// can run here (probing external builders, once), and the builders found.
func (s *Service) Capabilities(ctx context.Context, _ *api.CapabilitiesRequest) (*api.CapabilitiesResponse, error) {
	resp := &api.CapabilitiesResponse{Version: s.version, DefaultFormat: s.cfg.DefaultFormat, Workers: int32(s.cfg.Workers),
		Deflate: stargz.DeflateDescription()}
	if resp.Workers == 0 {
		resp.Workers = int32(runtime.GOMAXPROCS(0))
	}
	for _, f := range format.Registered() {
		if slices.Contains(s.formats.Disabled, f.Name) {
			continue // disabled_plugins removed it
		}
		out := &api.Format{Name: f.Name, Available: true}
		if reason, skipped := s.formats.Skipped[f.Name]; skipped {
			out.Available, out.Reason = false, reason.Error()
		} else if served, err := s.format(f.Name); err != nil {
			continue // registered but not loaded
		} else {
			opts, err := served.ResolveOptions(nil)
			if err == nil {
				err = served.Available(ctx, opts)
			}
			if err != nil {
				out.Available, out.Reason = false, err.Error()
			}
		}
		resp.Formats = append(resp.Formats, out)
	}
	builderPath := ""
	if f, ok := s.formats.Find(FormatNydus); ok {
		builderPath = f.Configured()["builder-path"]
	}
	b := nydus.Probe(ctx, builderPath)
	resp.Builders = append(resp.Builders, &api.Builder{Name: nydus.BuilderName, Path: b.Path, Version: b.Version, Found: b.Found})
	return resp, nil
}

// CheckEStargz is the gRPC handler; it answers from the label cache when it can.
func (s *Service) CheckEStargz(ctx context.Context, req *api.CheckEStargzRequest) (*api.CheckEStargzResponse, error) {
	resp, err := s.checkEStargz(ctx, req)
	return resp, errgrpc.ToGRPC(err)
}

func (s *Service) checkEStargz(ctx context.Context, req *api.CheckEStargzRequest) (*api.CheckEStargzResponse, error) {
	ctx, err := requestContext(ctx)
	if err != nil {
		return nil, err
	}
	ctx = s.conversionContext(ctx)
	dgst, err := digest.Parse(req.GetDigest())
	if err != nil {
		return nil, fmt.Errorf("digest %q: %v: %w", req.GetDigest(), err, errdefs.ErrInvalidArgument)
	}
	info, err := s.cs.Info(ctx, dgst)
	if err != nil {
		return nil, err
	}
	_, cached := labels.IsEStargz(info)
	is, err := stargz.IsEStargz(ctx, s.cs, dgst)
	if err != nil {
		return nil, err
	}
	return &api.CheckEStargzResponse{Estargz: is, Cached: cached}, nil
}
