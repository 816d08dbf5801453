// Package service is lazyconv's conversion service behind the gRPC API,
// written against containerd's interfaces (content.Store, images.Store,
// leases.Manager) so that the containerd plugin, the lazyconvd sidecar and the
// embedded CLI share it.
package service

import (
	"context"
	"fmt"
	"runtime"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/labels"
)

// Service converts images in one containerd's stores.
type Service struct {
	api.UnimplementedConverterServer
	cfg     Config
	version string
	conv    *converter.Converter
	cs      content.Store
	is      images.Store
	lm      leases.Manager
}

// New returns a Service over the given stores.
func New(cs content.Store, is images.Store, lm leases.Manager, cfg Config, version string) (*Service, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	var opts []converter.Option
	if cfg.Workers > 0 {
		opts = append(opts, converter.WithWorkers(cfg.Workers))
	}
	conv, err := converter.New(cs, lm, opts...)
	if err != nil {
		return nil, err
	}
	return &Service{cfg: cfg, version: version, conv: conv, cs: cs, is: is, lm: lm}, nil
}

// Register serves the API on a gRPC server.
func (s *Service) Register(server *grpc.Server) error {
	api.RegisterConverterServer(server, s)
	return nil
}

// Converter is the Converter the service runs.
func (s *Service) Converter() *converter.Converter { return s.conv }

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

// Convert is the gRPC handler.
func (s *Service) Convert(req *api.ConvertRequest, stream grpc.ServerStreamingServer[api.ConvertEvent]) error {
	return errgrpc.ToGRPC(s.ConvertImage(stream.Context(), req, stream.Send))
}

// ConvertImage converts the requested image, sending one event per layer
// change (at most every 100 ms per layer) and then the result.
func (s *Service) ConvertImage(ctx context.Context, req *api.ConvertRequest, send func(*api.ConvertEvent) error) error {
	ctx, err := requestContext(ctx)
	if err != nil {
		return err
	}
	if req.GetSource() == "" || req.GetTarget() == "" {
		return fmt.Errorf("source and target are required: %w", errdefs.ErrInvalidArgument)
	}
	format := req.GetFormat()
	if format == "" {
		format = s.cfg.DefaultFormat
	}
	lc, err := layerConverterFor(format, s.cfg, req)
	if err != nil {
		return err
	}
	pm, err := platformMatcher(req.GetPlatforms(), req.GetAllPlatforms())
	if err != nil {
		return err
	}
	progress := converter.NewProgress()
	before := s.conv.Conversions()
	type outcome struct {
		res *converter.ImageResult
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := s.conv.ConvertImage(ctx, s.is, req.GetSource(), req.GetTarget(), converter.ImageOptions{
			// zstd:chunked has no Docker media type, and its annotations need OCI manifests.
			Layer: lc, DockerToOCI: req.GetOci() || format == FormatZstdChunked, Platforms: pm, Progress: progress,
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
			if err := send(&api.ConvertEvent{Event: &api.ConvertEvent_Layer{Layer: layerEvent(st)}}); err != nil {
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
			if err := flush(); err != nil && out.err == nil {
				return err
			}
			if out.err != nil {
				return out.err
			}
			t := out.res.Image.Target
			return send(&api.ConvertEvent{Event: &api.ConvertEvent_Result{Result: &api.ConvertResult{
				Name:      out.res.Image.Name,
				Target:    &api.Descriptor{MediaType: t.MediaType, Digest: t.Digest.String(), Size: t.Size, Annotations: t.Annotations},
				Converted: s.conv.Conversions() - before,
			}}})
		}
	}
}

func layerEvent(st converter.LayerStatus) *api.LayerProgress {
	return &api.LayerProgress{
		Digest: st.Digest.String(), Size: st.Size, State: api.LayerState(st.State),
		BytesIn: st.BytesIn, BytesOut: st.BytesOut,
		OutputDigest: st.Output.String(), OutputSize: st.OutSize, ElapsedNs: int64(st.Elapsed),
	}
}

// LayerStatus turns a progress event back into a converter.LayerStatus.
func LayerStatus(p *api.LayerProgress) converter.LayerStatus {
	return converter.LayerStatus{
		Digest: digest.Digest(p.GetDigest()), Size: p.GetSize(), State: converter.LayerState(p.GetState()),
		BytesIn: p.GetBytesIn(), BytesOut: p.GetBytesOut(),
		Output: digest.Digest(p.GetOutputDigest()), OutSize: p.GetOutputSize(), Elapsed: time.Duration(p.GetElapsedNs()),
	}
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
	dgst, err := digest.Parse(req.GetDigest())
	if err != nil {
		return nil, fmt.Errorf("digest %q: %v: %w", req.GetDigest(), err, errdefs.ErrInvalidArgument)
	}
	info, err := s.cs.Info(ctx, dgst)
	if err != nil {
		return nil, err
	}
	_, cached := labels.IsEStargz(info)
	is, err := converter.IsEStargz(ctx, s.cs, dgst)
	if err != nil {
		return nil, err
	}
	return &api.CheckEStargzResponse{Estargz: is, Cached: cached}, nil
}

// Capabilities is the gRPC handler.
func (s *Service) Capabilities(context.Context, *api.CapabilitiesRequest) (*api.CapabilitiesResponse, error) {
	resp := &api.CapabilitiesResponse{Version: s.version, DefaultFormat: s.cfg.DefaultFormat, Workers: int32(s.cfg.Workers)}
	if resp.Workers == 0 {
		resp.Workers = int32(runtime.GOMAXPROCS(0))
	}
	for _, f := range Formats {
		resp.Formats = append(resp.Formats, &api.Format{Name: f, Available: true})
	}
	return resp, nil
}

// RecoverLeases deletes the conversion leases a previous process left behind
// (it crashed or was killed mid-conversion) in the given namespaces, so that
// garbage collection reclaims their half-made content. Call it at start-up,
// before serving.
func RecoverLeases(ctx context.Context, lm leases.Manager, nss []string) (int, error) {
	var n int
	for _, ns := range nss {
		nctx := namespaces.WithNamespace(ctx, ns)
		ls, err := lm.List(nctx, fmt.Sprintf("labels.%q", labels.LeaseConverting))
		if err != nil {
			return n, fmt.Errorf("listing leases in %s: %w", ns, err)
		}
		for _, l := range ls {
			if err := lm.Delete(nctx, l); err != nil && !errdefs.IsNotFound(err) {
				return n, err
			}
			n++
		}
	}
	return n, nil
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

// overrides applies a request's optional level and chunk size over defaults.
func overrides(level *int32, chunk *int64, defLevel, defChunk int) (int, int) {
	if level != nil {
		defLevel = int(*level)
	}
	if chunk != nil {
		defChunk = int(*chunk)
	}
	return defLevel, defChunk
}

// LayerConverter builds the layer converter of a format with the configured
// options (nil for FormatNone).
func LayerConverter(format string, cfg Config) (converter.LayerConverter, error) {
	return layerConverterFor(format, cfg, nil)
}

// layerConverterFor builds the layer converter of a format, with the
// request's options (if any) over the configured defaults.
func layerConverterFor(format string, cfg Config, req *api.ConvertRequest) (converter.LayerConverter, error) {
	switch format {
	case FormatEStargz:
		level, chunk := cfg.EStargzCompressionLevel, cfg.EStargzChunkSize
		if eo := req.GetEstargz(); eo != nil {
			level, chunk = overrides(eo.CompressionLevel, eo.ChunkSize, level, chunk)
		}
		return converter.NewEStargz(converter.WithEStargzCompressionLevel(level), converter.WithEStargzChunkSize(chunk))
	case FormatZstdChunked:
		level, chunk := cfg.ZstdChunkedCompressionLevel, cfg.ZstdChunkedChunkSize
		if zo := req.GetZstdchunked(); zo != nil {
			level, chunk = overrides(zo.CompressionLevel, zo.ChunkSize, level, chunk)
		}
		return converter.NewZstdChunked(converter.WithZstdChunkedCompressionLevel(level), converter.WithZstdChunkedChunkSize(chunk))
	case FormatUncompress:
		return converter.NewRecompress(converter.Uncompressed, 0)
	case FormatGzip:
		return converter.NewRecompress(converter.Gzip, 0)
	case FormatZstd:
		return converter.NewRecompress(converter.Zstd, 0)
	case FormatNone:
		return nil, nil
	}
	return nil, fmt.Errorf("unknown format %q (known: %v, %s): %w", format, Formats, FormatNone, errdefs.ErrInvalidArgument)
}
