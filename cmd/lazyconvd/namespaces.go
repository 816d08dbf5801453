package main

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc"
)

// namespaceGuard refuses, before any handler runs, every request whose
// containerd namespace is not one of allowed (none is refused when allowed
// is empty). The namespace is read as the service reads it, from containerd's
// gRPC header; a request without one is checked as the default namespace,
// so that leaving the header out never gets past the guard (the service then
// refuses it for having no namespace, as it does without the guard).
type namespaceGuard struct{ allowed []string }

// check is nil when the request's namespace is allowed, else
// errdefs.ErrPermissionDenied naming it.
func (g namespaceGuard) check(ctx context.Context) error {
	if len(g.allowed) == 0 {
		return nil
	}
	ns, ok := namespaces.Namespace(ctx)
	if !ok || ns == "" {
		ns = namespaces.Default
	}
	if slices.Contains(g.allowed, ns) {
		return nil
	}
	return fmt.Errorf("namespace %q is not served on this socket (allowed_namespaces: %s): %w",
		ns, strings.Join(g.allowed, ", "), errdefs.ErrPermissionDenied)
}

func (g namespaceGuard) unary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := g.check(ctx); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return handler(ctx, req)
}

func (g namespaceGuard) stream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := g.check(ss.Context()); err != nil {
		return errgrpc.ToGRPC(err)
	}
	return handler(srv, ss)
}

// newServer is a gRPC server whose every call, unary or streaming, goes
// through the namespace guard of allowed.
func newServer(allowed []string) *grpc.Server {
	g := namespaceGuard{allowed: allowed}
	return grpc.NewServer(grpc.ChainUnaryInterceptor(g.unary), grpc.ChainStreamInterceptor(g.stream))
}
