package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/urfave/cli/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/internal/convertcmd"
	"github.com/lazyconv/lazyconv/localstore"
	"github.com/lazyconv/lazyconv/service"
)

// defaultAddress is containerd's default socket, as ctr has it.
const defaultAddress = "/run/containerd/containerd.sock"

// converterAPI is the conversion service, in-process or over gRPC.
type converterAPI interface {
	Convert(ctx context.Context, req *api.ConvertRequest, onEvent func(*api.ConvertEvent) error) error
	CheckEStargz(ctx context.Context, req *api.CheckEStargzRequest) (*api.CheckEStargzResponse, error)
	Capabilities(ctx context.Context) (*api.CapabilitiesResponse, error)
	Push(ctx context.Context, req *api.PushRequest) (*api.PushResponse, error)
	Verify(ctx context.Context, req *api.VerifyRequest) (*api.VerifyResponse, error)
}

// session is what a command works on: a containerd client (over the embedded
// store's in-process services, or a daemon's socket) and the conversion API.
type session struct {
	ctx    context.Context
	client *containerd.Client
	api    converterAPI
	store  *localstore.Store // embedded mode only
	where  string            // for messages: the root or the address
	out    io.Writer
	closer func() error
}

// embedded reports whether the session runs on an in-process store.
func (s *session) embedded() bool { return s.store != nil }

func (s *session) Close() error { return s.closer() }

// openSession picks the mode as a user of ctr would expect: --root means the
// embedded store; --address or --converter-address mean a daemon; with
// neither, a daemon if containerd's default socket exists, else the embedded
// store at its default root.
func openSession(ctx context.Context, cmd *cli.Command) (*session, error) {
	root := cmd.Root()
	ctx = namespaces.WithNamespace(ctx, root.String("namespace"))
	daemon := root.IsSet("address") || root.IsSet("converter-address")
	if !root.IsSet("root") && !daemon {
		if _, err := os.Stat(root.String("address")); err == nil {
			daemon = true
		}
	}
	if daemon && !root.IsSet("root") {
		for _, l := range convertcmd.LimitsOf(&converter.Limits{}) {
			if root.IsSet(l.Name) {
				return nil, fmt.Errorf("--%s sets the embedded service's limit; a daemon enforces the max_* keys of its own configuration: %w",
					l.Name, errdefs.ErrInvalidArgument)
			}
		}
		return openDaemon(ctx, root)
	}
	return openEmbedded(ctx, cmd)
}

func openEmbedded(ctx context.Context, cmd *cli.Command) (*session, error) {
	root := cmd.Root()
	st, err := localstore.Open(ctx, root.String("root"))
	if err != nil {
		return nil, err
	}
	cfg, formats, err := convertcmd.EmbeddedConfig(cmd)
	if err != nil {
		st.Close()
		return nil, err
	}
	svc, err := service.New(st.ContentStore(), st.ImageStore(), st.LeaseManager(), cfg, version,
		service.WithScratchDir(filepath.Join(st.Root(), "scratch")), formats)
	if err != nil {
		st.Close()
		return nil, err
	}
	return &session{
		ctx: ctx, client: st.Client(), api: localAPI{svc}, store: st, where: st.Root(),
		out: root.Writer, closer: st.Close,
	}, nil
}

func openDaemon(ctx context.Context, root *cli.Command) (*session, error) {
	address := root.String("address")
	client, err := containerd.New(address, containerd.WithDefaultNamespace(root.String("namespace")))
	if err != nil {
		return nil, fmt.Errorf("connecting to containerd at %s: %w", address, err)
	}
	s := &session{ctx: ctx, client: client, where: address, out: root.Writer, closer: client.Close}
	conn, _ := client.Conn().(*grpc.ClientConn)
	if ca := root.String("converter-address"); ca != "" {
		c, err := grpc.NewClient("unix://"+ca, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			client.Close()
			return nil, fmt.Errorf("connecting to lazyconvd at %s: %w", ca, err)
		}
		conn = c
		s.where = ca
		s.closer = func() error { c.Close(); return client.Close() }
	}
	s.api = remoteAPI{client: api.NewConverterClient(conn), where: s.where}
	return s, nil
}

// localAPI calls the service in-process.
type localAPI struct{ svc *service.Service }

func (l localAPI) Convert(ctx context.Context, req *api.ConvertRequest, onEvent func(*api.ConvertEvent) error) error {
	return l.svc.ConvertImage(ctx, req, onEvent)
}

func (l localAPI) CheckEStargz(ctx context.Context, req *api.CheckEStargzRequest) (*api.CheckEStargzResponse, error) {
	resp, err := l.svc.CheckEStargz(ctx, req)
	return resp, errgrpc.ToNative(err)
}

func (l localAPI) Capabilities(ctx context.Context) (*api.CapabilitiesResponse, error) {
	return l.svc.Capabilities(ctx, &api.CapabilitiesRequest{})
}

func (l localAPI) Push(ctx context.Context, req *api.PushRequest) (*api.PushResponse, error) {
	return l.svc.PushImage(ctx, req)
}

func (l localAPI) Verify(ctx context.Context, req *api.VerifyRequest) (*api.VerifyResponse, error) {
	return l.svc.VerifyImage(ctx, req)
}

// remoteAPI calls the plugin (on containerd's socket) or the sidecar.
type remoteAPI struct {
	client api.ConverterClient
	where  string
}

func (r remoteAPI) Convert(ctx context.Context, req *api.ConvertRequest, onEvent func(*api.ConvertEvent) error) error {
	stream, err := r.client.Convert(ctx, req)
	if err != nil {
		return r.native(err)
	}
	_, err = api.ReceiveConvert(stream, onEvent)
	return r.native(err)
}

func (r remoteAPI) CheckEStargz(ctx context.Context, req *api.CheckEStargzRequest) (*api.CheckEStargzResponse, error) {
	resp, err := r.client.CheckEStargz(ctx, req)
	return resp, r.native(err)
}

func (r remoteAPI) Capabilities(ctx context.Context) (*api.CapabilitiesResponse, error) {
	resp, err := r.client.Capabilities(ctx, &api.CapabilitiesRequest{})
	return resp, r.native(err)
}

func (r remoteAPI) Push(ctx context.Context, req *api.PushRequest) (*api.PushResponse, error) {
	resp, err := r.client.Push(ctx, req)
	return resp, r.native(err)
}

func (r remoteAPI) Verify(ctx context.Context, req *api.VerifyRequest) (*api.VerifyResponse, error) {
	resp, err := r.client.Verify(ctx, req)
	return resp, r.native(err)
}

// native turns a gRPC error into an errdefs one, and a missing service into
// one clear line naming the alternatives.
func (r remoteAPI) native(err error) error {
	return convertcmd.NativeError(err, fmt.Sprintf("%s serves no lazyconv API (plugin io.containerd.grpc.v1.lazyconv not loaded): "+
		"run containerd-lazyconv, point --converter-address at a lazyconvd sidecar, or use --root DIR for embedded mode", r.where))
}
