package service_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/format"
	"github.com/lazyconv/lazyconv/internal/imagegen"
	"github.com/lazyconv/lazyconv/labels"
	"github.com/lazyconv/lazyconv/localstore"
	"github.com/lazyconv/lazyconv/service"
)

func TestMain(m *testing.M) {
	_ = log.SetLevel("error")
	os.Exit(m.Run())
}

type fixture struct {
	ctx   context.Context
	store *localstore.Store
	svc   *service.Service
}

func newFixture(t *testing.T, cfg service.Config, opts ...service.Option) *fixture {
	t.Helper()
	ctx := namespaces.WithNamespace(context.Background(), "test")
	st, err := localstore.Open(ctx, t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	svc, err := service.New(st.ContentStore(), st.ImageStore(), st.LeaseManager(), cfg, "test", opts...)
	require.NoError(t, err)
	img := imagegen.Image{Name: "app:v1"}
	for _, e := range []imagegen.Entry{file("a", "alpha"), file("b", "beta")} {
		tarball := imagegen.TarBytes([]imagegen.Entry{e})
		img.Layers = append(img.Layers, imagegen.Layer{MediaType: ocispec.MediaTypeImageLayerGzip, Blob: imagegen.Compress(tarball, "gzip")})
	}
	_, err = imagegen.Store(ctx, st.ContentStore(), st.ImageStore(), img)
	require.NoError(t, err)
	return &fixture{ctx: ctx, store: st, svc: svc}
}

func file(name, body string) imagegen.Entry {
	e := imagegen.Entry{Body: []byte(body)}
	e.Header.Name, e.Header.Typeflag, e.Header.Mode = name, '0', 0o644
	return e
}

func TestConvertStreamsLayersThenResult(t *testing.T) {
	f := newFixture(t, service.DefaultConfig())
	var events []*api.ConvertEvent
	req := &api.ConvertRequest{Source: "app:v1", Target: "app:esgz", AllPlatforms: true}
	require.NoError(t, f.svc.ConvertImage(f.ctx, req, func(ev *api.ConvertEvent) error {
		events = append(events, ev)
		return nil
	}))
	require.NotEmpty(t, events)
	last := events[len(events)-1].GetResult()
	require.NotNil(t, last, "the result comes last")
	assert.Equal(t, "app:esgz", last.GetName())
	assert.Equal(t, int64(2), last.GetConverted())
	final := map[string]api.LayerState{}
	for _, ev := range events[:len(events)-1] {
		require.NotNil(t, ev.GetLayer())
		final[ev.GetLayer().GetDigest()] = ev.GetLayer().GetState()
	}
	require.Len(t, final, 2)
	for d, s := range final {
		assert.Equal(t, api.LayerState_LAYER_STATE_COMMITTED, s, d)
	}

	// Again: the default format (estargz) comes from the cache.
	events = nil
	require.NoError(t, f.svc.ConvertImage(f.ctx, req, func(ev *api.ConvertEvent) error { events = append(events, ev); return nil }))
	assert.Equal(t, int64(0), events[len(events)-1].GetResult().GetConverted())
}

func TestConvertRejectsBadRequests(t *testing.T) {
	f := newFixture(t, service.DefaultConfig())
	level := int32(42)
	for _, tc := range []struct {
		name  string
		ctx   context.Context
		req   *api.ConvertRequest
		class func(error) bool
	}{
		{"no source", f.ctx, &api.ConvertRequest{Target: "x"}, errdefs.IsInvalidArgument},
		{"unknown format", f.ctx, &api.ConvertRequest{Source: "app:v1", Target: "x", Format: "squashfs"}, errdefs.IsInvalidArgument},
		{"bad level", f.ctx, &api.ConvertRequest{Source: "app:v1", Target: "x", Estargz: &api.EStargzOptions{CompressionLevel: &level}}, errdefs.IsInvalidArgument},
		{"bad platform", f.ctx, &api.ConvertRequest{Source: "app:v1", Target: "x", Platforms: []string{"a/b/c/d/e"}}, errdefs.IsInvalidArgument},
		{"missing image", f.ctx, &api.ConvertRequest{Source: "nope:v1", Target: "x"}, errdefs.IsNotFound},
		{"no namespace", context.Background(), &api.ConvertRequest{Source: "app:v1", Target: "x"}, errdefs.IsFailedPrecondition},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := f.svc.ConvertImage(tc.ctx, tc.req, func(*api.ConvertEvent) error { return nil })
			require.Error(t, err)
			assert.True(t, tc.class(err), "%v", err)
		})
	}
}

func TestConfigIsValidated(t *testing.T) {
	st, err := localstore.Open(context.Background(), t.TempDir())
	require.NoError(t, err)
	defer st.Close()
	bad := func(edit func(*service.Config)) service.Config {
		cfg := service.DefaultConfig()
		edit(&cfg)
		return cfg
	}
	for _, cfg := range []service.Config{
		bad(func(c *service.Config) { c.Workers = -1 }),
		bad(func(c *service.Config) { c.DefaultFormat = "tarball" }),
		bad(func(c *service.Config) { c.DefaultFormat = "none" }),
	} {
		_, err := service.New(st.ContentStore(), st.ImageStore(), st.LeaseManager(), cfg, "test")
		require.Error(t, err)
		assert.True(t, errdefs.IsInvalidArgument(err), "%v", err)
	}
}

func TestRecoverLeasesDropsOnlyLazyconvLeases(t *testing.T) {
	f := newFixture(t, service.DefaultConfig())
	lm := f.store.LeaseManager()
	ours, err := lm.Create(f.ctx, leases.WithRandomID(), leases.WithLabel(labels.LeaseConverting, "app:v1"))
	require.NoError(t, err)
	theirs, err := lm.Create(f.ctx, leases.WithRandomID(), leases.WithLabel("other", "x"))
	require.NoError(t, err)
	n, err := service.RecoverLeases(f.ctx, lm, []string{"test"})
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	ls, err := lm.List(f.ctx)
	require.NoError(t, err)
	var ids []string
	for _, l := range ls {
		ids = append(ids, l.ID)
	}
	assert.Equal(t, []string{theirs.ID}, ids)
	assert.NotContains(t, ids, ours.ID)
}

func TestGRPCEdge(t *testing.T) {
	f := newFixture(t, service.DefaultConfig())
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	server := grpc.NewServer()
	require.NoError(t, f.svc.Register(server))
	go server.Serve(l)
	defer server.Stop()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	client := api.NewConverterClient(conn)
	ctx := namespaces.WithNamespace(context.Background(), "test") // travels as containerd's gRPC header

	caps, err := client.Capabilities(ctx, &api.CapabilitiesRequest{})
	require.NoError(t, err)
	assert.Equal(t, "estargz", caps.GetDefaultFormat())
	var names []string
	for _, f := range caps.GetFormats() {
		names = append(names, f.GetName())
	}
	assert.Equal(t, service.FormatNames(), names)

	stream, err := client.Convert(ctx, &api.ConvertRequest{Source: "app:v1", Target: "app:esgz", AllPlatforms: true})
	require.NoError(t, err)
	result, err := api.ReceiveConvert(stream, nil)
	require.NoError(t, err)
	require.NotNil(t, result)
	img, err := f.store.ImageStore().Get(f.ctx, "app:esgz")
	require.NoError(t, err)
	assert.Equal(t, img.Target.Digest.String(), result.GetTarget().GetDigest())

	stream, err = client.Convert(ctx, &api.ConvertRequest{Source: "missing:v1", Target: "x"})
	require.NoError(t, err)
	_, err = stream.Recv()
	assert.True(t, errdefs.IsNotFound(errgrpc.ToNative(err)), "errors keep their errdefs class across gRPC: %v", err)

	_, err = client.CheckEStargz(ctx, &api.CheckEStargzRequest{Digest: "bogus"})
	assert.True(t, errdefs.IsInvalidArgument(errgrpc.ToNative(err)), "%v", err)
	resp, err := client.CheckEStargz(ctx, &api.CheckEStargzRequest{Digest: img.Target.Digest.String()})
	require.NoError(t, err)
	assert.False(t, resp.GetEstargz(), "a manifest is no eStargz blob")
	assert.False(t, resp.GetCached())
	resp, err = client.CheckEStargz(ctx, &api.CheckEStargzRequest{Digest: img.Target.Digest.String()})
	require.NoError(t, err)
	assert.True(t, resp.GetCached(), "the second answer comes from the label")
}

func TestNydusIsRefusedBeforeAnyWorkWithoutBuilder(t *testing.T) {
	loaded, err := format.Load(context.Background(), map[string]format.Config{
		"nydus": {"builder_path": filepath.Join(t.TempDir(), "nydus-image")}}, nil)
	require.NoError(t, err)
	require.Contains(t, loaded.Skipped, "nydus", "the nydus plugin is skipped without its builder")
	f := newFixture(t, service.DefaultConfig(), service.WithFormats(loaded))
	caps, err := f.svc.Capabilities(f.ctx, &api.CapabilitiesRequest{})
	require.NoError(t, err)
	var nydus *api.Format
	for _, fm := range caps.GetFormats() {
		if fm.GetName() == "nydus" {
			nydus = fm
		}
	}
	require.NotNil(t, nydus)
	assert.False(t, nydus.GetAvailable())
	assert.Contains(t, nydus.GetReason(), "nydus-image")
	require.Len(t, caps.GetBuilders(), 1)
	assert.False(t, caps.GetBuilders()[0].GetFound())

	before := contentDigests(t, f)
	events := 0
	err = f.svc.ConvertImage(f.ctx, &api.ConvertRequest{Source: "app:v1", Target: "app:nydus", Format: "nydus"},
		func(*api.ConvertEvent) error { events++; return nil })
	require.Error(t, err)
	assert.True(t, errdefs.IsUnavailable(err), "%v", err)
	assert.Contains(t, err.Error(), "nydus-image")
	assert.Equal(t, 0, events, "nothing started")
	assert.Equal(t, before, contentDigests(t, f))
}

func contentDigests(t *testing.T, f *fixture) []string {
	t.Helper()
	var out []string
	require.NoError(t, f.store.ContentStore().Walk(f.ctx, func(info content.Info) error {
		out = append(out, info.Digest.String())
		return nil
	}))
	return out
}
