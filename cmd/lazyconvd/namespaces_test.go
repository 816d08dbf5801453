package main

import (
	"context"
	"net"
	"path/filepath"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
)

// recordingServer answers every call and records the namespace each handler
// saw (as the service reads it), so that a test knows which calls got past
// the guard.
type recordingServer struct {
	api.UnimplementedConverterServer
	mu   sync.Mutex
	seen []string
}

func (s *recordingServer) record(ctx context.Context) {
	ns, _ := namespaces.Namespace(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen = append(s.seen, ns)
}

func (s *recordingServer) Convert(_ *api.ConvertRequest, stream grpc.ServerStreamingServer[api.ConvertEvent]) error {
	s.record(stream.Context())
	return stream.Send(&api.ConvertEvent{Event: &api.ConvertEvent_Result{Result: &api.ConvertResult{Name: "x"}}})
}

func (s *recordingServer) Push(ctx context.Context, _ *api.PushRequest) (*api.PushResponse, error) {
	s.record(ctx)
	return &api.PushResponse{}, nil
}

func (s *recordingServer) Verify(ctx context.Context, _ *api.VerifyRequest) (*api.VerifyResponse, error) {
	s.record(ctx)
	return &api.VerifyResponse{}, nil
}

func (s *recordingServer) CheckEStargz(ctx context.Context, _ *api.CheckEStargzRequest) (*api.CheckEStargzResponse, error) {
	s.record(ctx)
	return &api.CheckEStargzResponse{}, nil
}

func (s *recordingServer) Capabilities(ctx context.Context, _ *api.CapabilitiesRequest) (*api.CapabilitiesResponse, error) {
	s.record(ctx)
	return &api.CapabilitiesResponse{}, nil
}

// guardedClient serves a recordingServer behind newServer(allowed) on a
// unix socket and returns a client of it.
func guardedClient(t *testing.T, allowed []string) (api.ConverterClient, *recordingServer) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	server := newServer(allowed)
	rec := &recordingServer{}
	api.RegisterConverterServer(server, rec)
	go func() { _ = server.Serve(l) }()
	t.Cleanup(server.Stop)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return api.NewConverterClient(conn), rec
}

// every calls each method of the API, returning each one's error by name.
func every(ctx context.Context, c api.ConverterClient) map[string]error {
	out := map[string]error{}
	stream, err := c.Convert(ctx, &api.ConvertRequest{Source: "a", Target: "b"})
	if err == nil {
		_, err = api.ReceiveConvert(stream, nil)
	}
	out["Convert"] = err
	_, out["Push"] = c.Push(ctx, &api.PushRequest{Ref: "a"})
	_, out["Verify"] = c.Verify(ctx, &api.VerifyRequest{Ref: "a"})
	_, out["CheckEStargz"] = c.CheckEStargz(ctx, &api.CheckEStargzRequest{Digest: "a"})
	_, out["Capabilities"] = c.Capabilities(ctx, &api.CapabilitiesRequest{})
	return out
}

func TestNamespaceGuard(t *testing.T) {
	withHeader := func(values ...string) context.Context {
		md := metadata.MD{}
		md.Append(namespaces.GRPCHeader, values...)
		return metadata.NewOutgoingContext(context.Background(), md)
	}
	for _, tc := range []struct {
		name    string
		allowed []string
		ctx     context.Context
		// refused: PermissionDenied for every method, no handler run; else
		// every handler runs and sees served ("": no namespace, which the
		// service itself then refuses as it does without the guard).
		refused bool
		served  string
	}{
		{"no allowed_namespaces serves every namespace", nil, namespaces.WithNamespace(context.Background(), "k8s.io"), false, "k8s.io"},
		{"an allowed namespace", []string{"builds", "default"}, namespaces.WithNamespace(context.Background(), "builds"), false, "builds"},
		{"another namespace is refused", []string{"builds"}, namespaces.WithNamespace(context.Background(), "k8s.io"), true, ""},
		{"no namespace is checked as the default one: refused", []string{"builds"}, context.Background(), true, ""},
		{"no namespace is checked as the default one: passed on", []string{"default"}, context.Background(), false, ""},
		{"the namespace checked is the one the service reads", []string{"builds"}, withHeader("builds", "k8s.io"), false, "builds"},
		{"a second header value does not get in", []string{"builds"}, withHeader("k8s.io", "builds"), true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, rec := guardedClient(t, tc.allowed)
			refused := tc.refused
			for method, err := range every(tc.ctx, client) {
				if refused {
					require.Error(t, err, method)
					assert.True(t, errdefs.IsPermissionDenied(errgrpc.ToNative(err)), "%s: PermissionDenied: %v", method, err)
					continue
				}
				assert.NoError(t, err, method)
			}
			if refused {
				assert.Empty(t, rec.seen, "no handler runs for a refused namespace")
				return
			}
			assert.Len(t, rec.seen, 5, "every method is served")
			for _, ns := range rec.seen {
				assert.Equal(t, tc.served, ns)
			}
		})
	}
}

func TestNamespaceGuardErrorNamesTheNamespace(t *testing.T) {
	err := namespaceGuard{allowed: []string{"builds"}}.check(namespaces.WithNamespace(context.Background(), "k8s.io"))
	require.Error(t, err)
	assert.True(t, errdefs.IsPermissionDenied(err))
	assert.Contains(t, err.Error(), `"k8s.io"`)
	assert.Contains(t, err.Error(), "allowed_namespaces")
}
