package service

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/format"
	"github.com/lazyconv/lazyconv/labels"
	"github.com/lazyconv/lazyconv/remote"
)

// Convert is the gRPC handler.
func (s *Service) Convert(req *api.ConvertRequest, stream grpc.ServerStreamingServer[api.ConvertEvent]) error {
	return errgrpc.ToGRPC(s.ConvertImage(stream.Context(), req, stream.Send))
}

// ConvertImage converts the requested image, sending one event per layer
// change (at most every 100 ms per layer) and then the result.
func (s *Service) ConvertImage(ctx context.Context, req *api.ConvertRequest, send func(*api.ConvertEvent) error) error {
	return s.convertImage(ctx, req, send, conversionPin{})
}

// conversionPin is what a rule's conversion fixes beyond its request.
type conversionPin struct {
	// platforms, if set, replaces the request's.
	platforms platforms.MatchComparer
	// source, if set, is the digest converted (converter.ImageOptions.SourceDigest).
	source digest.Digest
	// labels, if not nil, are the target's labels instead of the source's.
	labels map[string]string
}

func (s *Service) convertImage(ctx context.Context, req *api.ConvertRequest, send func(*api.ConvertEvent) error, pin conversionPin) error {
	ctx, err := requestContext(ctx)
	if err != nil {
		return err
	}
	ctx = s.conversionContext(ctx)
	if req.GetSource() == "" || req.GetTarget() == "" {
		return fmt.Errorf("source and target are required: %w", errdefs.ErrInvalidArgument)
	}
	if err := s.checkOverwrite(ctx, req); err != nil {
		return err
	}
	p, format, oci, err := s.planRequest(ctx, req)
	if err != nil {
		return err
	}
	pm, err := platformMatcher(req.GetPlatforms(), req.GetAllPlatforms())
	if err != nil {
		return err
	}
	if pin.platforms != nil {
		pm = pin.platforms
	}
	resolver := registryOptions(req.GetRegistry()).ResolverFor(req.GetSource())
	ensure := s.layerSource(resolver, req.GetSource())
	var shared converter.SharedConversions
	if !s.cfg.DisableRegistryCache && !req.GetNoRegistryCache() {
		shared = remote.NewSharedConversions(s.cs, resolver, s.fetcher, req.GetSource(), remote.Publishers(s.cfg.TrustedPublishers))
	}
	progress := converter.NewProgress()
	before := s.conv.Conversions()
	m := serviceMetrics()
	m.inFlight.Inc()
	defer m.inFlight.Dec()
	s.idle.begin()
	defer s.idle.end()
	start := time.Now()
	type outcome struct {
		res *converter.ImageResult
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := s.conv.ConvertImage(ctx, s.is, req.GetSource(), req.GetTarget(), converter.ImageOptions{
			Layers: p.Layers, AppendLayer: p.AppendLayer, Finish: p.Finish, Manifests: p.Manifests, DockerToOCI: req.GetOci() || oci, Platforms: pm, Progress: progress,
			EnsureLayer: ensure, Shared: shared, RequireLossless: s.cfg.RequireLossless || req.GetRequireLossless(), Limits: s.cfg.Limits,
			SourceDigest: pin.source, TargetLabels: pin.labels,
		})
		done <- outcome{res, err}
	}()
	sent := map[digest.Digest]converter.LayerStatus{}
	flush := func() error {
		for _, st := range progress.Snapshot() {
			if prev, ok := sent[st.Digest]; ok && prev.State == st.State && prev.BytesIn == st.BytesIn && prev.BytesOut == st.BytesOut {
				continue
			}
			sent[st.Digest] = st
			if err := send(&api.ConvertEvent{Event: &api.ConvertEvent_Layer{Layer: LayerEvent(st)}}); err != nil {
				return err
			}
		}
		return nil
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			if err := flush(); err != nil {
				log.G(ctx).WithError(err).Debug("progress not delivered")
			}
		case out := <-done:
			m.record(ctx, req.GetSource(), req.GetTarget(), format, progress.Snapshot(), out.err, time.Since(start))
			if err := flush(); err != nil && out.err == nil {
				return err
			}
			if out.err != nil {
				return out.err
			}
			t := out.res.Image.Target
			result := &api.ConvertResult{
				Name:      out.res.Image.Name,
				Target:    descriptor(t.MediaType, t.Digest.String(), t.Size, t.Annotations),
				Converted: s.conv.Conversions() - before,
				Warnings:  out.res.Warnings,
			}
			for src, where := range out.res.Shared {
				if result.Shared == nil {
					result.Shared = map[string]string{}
				}
				result.Shared[src.String()] = where
			}
			for _, l := range out.res.Layers {
				if l.Origin != "" {
					if result.Origins == nil {
						result.Origins = map[string]string{}
					}
					result.Origins[l.Source.Digest.String()] = l.Origin
				}
				if text := l.Desc.Annotations[labels.NotLosslessAnnotation]; text != "" {
					if result.NotLossless == nil {
						result.NotLossless = map[string]string{}
					}
					result.NotLossless[l.Source.Digest.String()] = text
				}
			}
			return send(&api.ConvertEvent{Event: &api.ConvertEvent_Result{Result: result}})
		}
	}
}

// planRequest looks the request's format up in the table, resolves its
// options (defaults, configuration, request), checks the format can run
// here, and builds its plan. It returns the format's name and whether it
// implies OCI.
func (s *Service) planRequest(ctx context.Context, req *api.ConvertRequest) (format.Plan, string, bool, error) {
	name := req.GetFormat()
	if name == "" {
		name = s.cfg.DefaultFormat
	}
	if name == FormatNone {
		return format.Plan{}, name, false, nil
	}
	f, err := s.format(name)
	if err != nil {
		// A request to a format that is off here is still checked first: an
		// option it may not set is refused as such.
		if registered, lerr := format.Lookup(name); lerr == nil {
			if _, oerr := registered.ResolveOptions(RequestOptions(name, req)); oerr != nil {
				return format.Plan{}, name, false, oerr
			}
		}
		return format.Plan{}, name, false, err
	}
	opts, err := f.ResolveOptions(RequestOptions(name, req))
	if err != nil {
		return format.Plan{}, name, false, err
	}
	if err := f.Available(ctx, opts); err != nil {
		return format.Plan{}, name, false, err
	}
	p, err := f.Plan(opts, req)
	return p, name, f.OCI, err
}

// RequestOptions are a request's options for format (the request's, or the
// service's default when it names none) by name: the typed option messages
// older clients send, overridden by the options map.
func RequestOptions(format string, req *api.ConvertRequest) map[string]string {
	out := map[string]string{}
	level := func(l *int32) {
		if l != nil {
			out["compression-level"] = strconv.Itoa(int(*l))
		}
	}
	chunk := func(c *int64) {
		if c != nil {
			out["chunk-size"] = strconv.FormatInt(*c, 10)
		}
	}
	switch format {
	case FormatEStargz, FormatEStargzOptimized:
		if o := req.GetEstargz(); o != nil {
			level(o.CompressionLevel)
			chunk(o.ChunkSize)
		}
	case FormatZstdChunked:
		if o := req.GetZstdchunked(); o != nil {
			level(o.CompressionLevel)
			chunk(o.ChunkSize)
		}
	case FormatNydus:
		if o := req.GetNydus(); o != nil {
			for k, v := range map[string]string{
				"builder-path": o.GetBuilderPath(), "work-dir": o.GetWorkDir(), "fs-version": o.GetFsVersion(),
				"compressor": o.GetCompressor(), "prefetch-patterns": o.GetPrefetchPatterns(),
			} {
				if v != "" {
					out[k] = v
				}
			}
		}
	}
	for k, v := range req.GetOptions() {
		out[k] = v
	}
	return out
}
