// Package service is lazyconv's conversion service behind the gRPC API,
// written against containerd's interfaces (content.Store, images.Store,
// leases.Manager) so that the containerd plugin, the lazyconvd sidecar and the
// embedded CLI share it. Formats come from one table (formats.go); handlers
// are split by job: conversion and its progress stream (convert.go,
// events.go), push, verification, capabilities, and lease recovery after a
// crash (leases.go).
package service

import (
	"context"
	"fmt"
	"os"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"google.golang.org/grpc"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/format"
	"github.com/lazyconv/lazyconv/rebuild"
	"github.com/lazyconv/lazyconv/remote"
)

// Service converts images in one containerd's stores.
type Service struct {
	api.UnimplementedConverterServer
	cfg     Config
	version string
	conv    *converter.Converter
	fetcher *remote.Fetcher
	cs      content.Store
	is      images.Store
	lm      leases.Manager
	// rebuilder rebuilds missing layers from snapshots (nil: no snapshotter here).
	rebuilder *rebuild.Rebuilder
	// idle gives memory back once no conversion runs.
	idle *idleReleaser
	// scratchDir holds conversions' unlinked scratch files ("": the system's).
	scratchDir string
	// formats is the format table: what the image-converter plugins gave.
	formats    format.Loaded
	formatsSet bool
}

// Option configures a Service.
type Option func(*Service)

// WithSnapshots lets the service rebuild layers whose blobs are gone from
// the snapshots containerd unpacked them into, through its differ (the
// daemon and the sidecar have them; the embedded store has none).
func WithSnapshots(snapshotter func(name string) (snapshots.Snapshotter, error), differ diff.Comparer) Option {
	return func(s *Service) { s.rebuilder = rebuild.New(s.cs, snapshotter, differ) }
}

// WithScratchDir keeps conversions' scratch files (a layer's TOC entries
// while it is written; unlinked as soon as they are made) in dir, which is
// created if needed. The daemon uses its plugin root.
func WithScratchDir(dir string) Option {
	return func(s *Service) { s.scratchDir = dir }
}

// conversionContext is ctx with the configured limits and scratch directory.
func (s *Service) conversionContext(ctx context.Context) context.Context {
	return converter.WithScratchDir(converter.WithLimits(ctx, s.cfg.Limits), s.scratchDir)
}

// New returns a Service over the given stores. It validates the
// configuration and does nothing else: external builders are probed when a
// format needs them.
func New(cs content.Store, is images.Store, lm leases.Manager, cfg Config, version string, opts ...Option) (*Service, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	var convOpts []converter.Option
	if cfg.Workers > 0 {
		convOpts = append(convOpts, converter.WithWorkers(cfg.Workers))
	}
	conv, err := converter.New(cs, lm, convOpts...)
	if err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, version: version, conv: conv, fetcher: remote.NewFetcher(cs, lm), cs: cs, is: is, lm: lm,
		idle: newIdleReleaser(DefaultIdleRelease)}
	for _, o := range opts {
		o(s)
	}
	if !s.formatsSet {
		if s.formats, err = format.Load(context.Background(), nil, nil); err != nil {
			return nil, err
		}
	}
	if cfg.DefaultFormat != FormatNone {
		if _, err := s.format(cfg.DefaultFormat); err != nil {
			return nil, fmt.Errorf("default_format: %w", err)
		}
	}
	if s.scratchDir != "" {
		if err := os.MkdirAll(s.scratchDir, 0o700); err != nil {
			return nil, fmt.Errorf("scratch directory: %w", err)
		}
	}
	return s, nil
}

// Register serves the API on a gRPC server.
func (s *Service) Register(server *grpc.Server) error {
	api.RegisterConverterServer(server, s)
	return nil
}

// Converter is the Converter the service runs.
func (s *Service) Converter() *converter.Converter { return s.conv }

// Fetcher is the service's fetcher of missing layers.
func (s *Service) Fetcher() *remote.Fetcher { return s.fetcher }

// requestContext carries the caller's namespace and lease (from containerd's
// gRPC headers, or the context) as context values and outgoing headers, so
// that they reach containerd whether the stores are in-process or remote.
func requestContext(ctx context.Context) (context.Context, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, err
	}
	ctx = namespaces.WithNamespace(ctx, ns)
	if id, ok := leases.FromContext(ctx); ok {
		ctx = leases.WithLease(ctx, id)
	}
	return ctx, nil
}

// platformMatcher follows ctr: all platforms, else the listed ones, else this
// machine's.
func platformMatcher(pss []string, all bool) (platforms.MatchComparer, error) {
	if all {
		return platforms.All, nil
	}
	if len(pss) > 0 {
		ps, err := platforms.ParseAll(pss)
		if err != nil {
			return nil, fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
		}
		return platforms.Ordered(ps...), nil
	}
	return platforms.DefaultStrict(), nil
}

// registryOptions turns the API's registry options into remote's.
func registryOptions(r *api.RegistryOptions) remote.RegistryOptions {
	return remote.RegistryOptions{PlainHTTP: r.GetPlainHttp(), Username: r.GetUsername(), Password: r.GetPassword()}
}

// descriptor is a descriptor on the wire.
func descriptor(mediaType, dgst string, size int64, annotations map[string]string) *api.Descriptor {
	return &api.Descriptor{MediaType: mediaType, Digest: dgst, Size: size, Annotations: annotations}
}
