// Package service is lazyconv's conversion service behind the gRPC API,
// written against containerd's interfaces (content.Store, images.Store,
// leases.Manager) so that the containerd plugin, the lazyconvd sidecar and the
// embedded CLI share it.
package service

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
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
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/labels"
	"github.com/lazyconv/lazyconv/remote"
)

// Service converts images in one containerd's stores.
type Service struct {
	api.UnimplementedConverterServer
	cfg     Config
	builder converter.NydusBuilder
	version string
	conv    *converter.Converter
	fetcher *remote.Fetcher
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
	builder := converter.ProbeNydusBuilder(context.Background(), cfg.NydusBuilderPath)
	return &Service{cfg: cfg, builder: builder, version: version, conv: conv, fetcher: remote.NewFetcher(cs, lm), cs: cs, is: is, lm: lm}, nil
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
	p, err := planFor(format, s.cfg, s.builder, req)
	if err != nil {
		return err
	}
	pm, err := platformMatcher(req.GetPlatforms(), req.GetAllPlatforms())
	if err != nil {
		return err
	}
	resolver := registryOptions(req.GetRegistry()).Resolver()
	ensure := func(ctx context.Context, layer, manifest ocispec.Descriptor, bytesIn *atomic.Int64) error {
		return s.fetcher.Ensure(ctx, resolver, layer, manifest, req.GetSource(), bytesIn)
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
			Layer: p.layer, LayerFor: p.layerFor, AppendLayer: p.appendLayer, DockerToOCI: req.GetOci() || p.oci, Platforms: pm, Progress: progress,
			EnsureLayer: ensure,
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
		_, err := planFor(f, s.cfg, s.builder, nil)
		format := &api.Format{Name: f, Available: err == nil}
		if err != nil {
			format.Reason = err.Error()
		}
		resp.Formats = append(resp.Formats, format)
	}
	resp.Builders = append(resp.Builders, &api.Builder{
		Name: converter.NydusBuilderName, Path: s.builder.Path, Version: s.builder.Version, Found: s.builder.Found,
	})
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

// registryOptions turns the API's registry options into remote's.
func registryOptions(r *api.RegistryOptions) remote.RegistryOptions {
	return remote.RegistryOptions{PlainHTTP: r.GetPlainHttp(), Username: r.GetUsername(), Password: r.GetPassword()}
}

// Fetcher is the service's fetcher of missing layers.
func (s *Service) Fetcher() *remote.Fetcher { return s.fetcher }

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
// options (nil for FormatNone). nydus needs its builder: without one it
// fails with ErrUnavailable.
func LayerConverter(format string, cfg Config) (converter.LayerConverter, error) {
	p, err := planFor(format, cfg, converter.ProbeNydusBuilder(context.Background(), cfg.NydusBuilderPath), nil)
	return p.layer, err
}

// plan is how a format converts an image.
type plan struct {
	layer       converter.LayerConverter
	layerFor    func(manifest ocispec.Descriptor, index int, layer ocispec.Descriptor) (converter.LayerConverter, error)
	appendLayer converter.AppendLayerFunc
	// oci: the format has no Docker media types (or needs OCI annotations).
	oci bool
}

// planFor builds the plan of a format, with the request's options (if any)
// over the configured defaults.
func planFor(format string, cfg Config, builder converter.NydusBuilder, req *api.ConvertRequest) (plan, error) {
	var (
		p   plan
		err error
	)
	switch format {
	case FormatEStargz:
		level, chunk := cfg.EStargzCompressionLevel, cfg.EStargzChunkSize
		if eo := req.GetEstargz(); eo != nil {
			level, chunk = overrides(eo.CompressionLevel, eo.ChunkSize, level, chunk)
		}
		p.layer, err = converter.NewEStargz(converter.WithEStargzCompressionLevel(level), converter.WithEStargzChunkSize(chunk))
	case FormatEStargzOptimized:
		level, chunk := cfg.EStargzCompressionLevel, cfg.EStargzChunkSize
		if eo := req.GetEstargz(); eo != nil {
			level, chunk = overrides(eo.CompressionLevel, eo.ChunkSize, level, chunk)
		}
		opts := []converter.EStargzOption{converter.WithEStargzCompressionLevel(level), converter.WithEStargzChunkSize(chunk)}
		if _, err := converter.NewPrioritizedEStargz(nil, false, opts...); err != nil {
			return plan{}, err
		}
		files := map[int][]string{}
		for _, lf := range req.GetPrioritized() {
			files[int(lf.GetLayerIndex())] = lf.GetPaths()
		}
		manifest, reuse := req.GetPrioritizedManifest(), req.GetReuse()
		p.layerFor = func(m ocispec.Descriptor, index int, _ ocispec.Descriptor) (converter.LayerConverter, error) {
			var fs []string
			if m.Digest.String() == manifest {
				fs = files[index]
			}
			return converter.NewPrioritizedEStargz(fs, reuse, opts...)
		}
	case FormatZstdChunked:
		level, chunk := cfg.ZstdChunkedCompressionLevel, cfg.ZstdChunkedChunkSize
		if zo := req.GetZstdchunked(); zo != nil {
			level, chunk = overrides(zo.CompressionLevel, zo.ChunkSize, level, chunk)
		}
		p.oci = true
		p.layer, err = converter.NewZstdChunked(converter.WithZstdChunkedCompressionLevel(level), converter.WithZstdChunkedChunkSize(chunk))
	case FormatNydus:
		var opts converter.NydusOptions
		if opts, err = nydusOptions(cfg, builder, req.GetNydus()); err != nil {
			return plan{}, err
		}
		p.oci = true
		if p.layer, err = converter.NewNydus(opts); err != nil {
			return plan{}, err
		}
		p.appendLayer, err = converter.NydusMergeHook(opts)
	case FormatUncompress:
		p.layer, err = converter.NewRecompress(converter.Uncompressed, 0)
	case FormatGzip:
		p.layer, err = converter.NewRecompress(converter.Gzip, 0)
	case FormatZstd:
		p.layer, err = converter.NewRecompress(converter.Zstd, 0)
	case FormatNone:
	default:
		err = fmt.Errorf("unknown format %q (known: %v, %s): %w", format, Formats, FormatNone, errdefs.ErrInvalidArgument)
	}
	if err != nil {
		return plan{}, err
	}
	return p, nil
}

// nydusOptions merges a request's nydus options over the configuration. The
// builder and its work directory are the service's own: a request may repeat
// them but not change them, since the service runs the builder with its own
// privileges.
func nydusOptions(cfg Config, builder converter.NydusBuilder, no *api.NydusOptions) (converter.NydusOptions, error) {
	opts := converter.NydusOptions{Builder: builder, WorkDir: cfg.NydusWorkDir, FsVersion: cfg.NydusFsVersion, Compressor: cfg.NydusCompressor}
	if no == nil {
		return opts, nil
	}
	if p := no.GetBuilderPath(); p != "" && p != builder.Path && p != cfg.NydusBuilderPath {
		return opts, fmt.Errorf("the service runs its configured nydus builder (%q), not %q: set nydus_builder_path in its config: %w",
			builder.Path, p, errdefs.ErrPermissionDenied)
	}
	if d := no.GetWorkDir(); d != "" && d != cfg.NydusWorkDir {
		return opts, fmt.Errorf("the service uses its configured nydus work directory, not %q: set nydus_work_dir in its config: %w",
			d, errdefs.ErrPermissionDenied)
	}
	if v := no.GetFsVersion(); v != "" {
		opts.FsVersion = v
	}
	if c := no.GetCompressor(); c != "" {
		opts.Compressor = c
	}
	opts.PrefetchPatterns = no.GetPrefetchPatterns()
	return opts, nil
}
