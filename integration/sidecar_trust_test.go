package integration

import (
	"context"
	"os"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
)

// sidecarClient is a raw gRPC client of the lazyconvd socket sock.
func sidecarClient(t *testing.T, sock string) api.ConverterClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return api.NewConverterClient(conn)
}

// lazyconvd with allowed_namespaces serves those namespaces and refuses every
// other with PermissionDenied, before doing anything in it; a request with no
// namespace is checked as the default namespace.
func TestSidecarServesOnlyItsAllowedNamespaces(t *testing.T) {
	requireRoot(t)
	stock := startDaemon(t, bins.stockContainerd, stockConfig)
	img := newTestImage(t, "example.com/trust/app:v1", 0)
	for _, ns := range []string{"default", "k8s.io"} {
		mustLazyconv(t, "--address", stock.address, "--namespace", ns, "image", "import", img.archive)
	}
	sidecar := startSidecarWith(t, stock.address, "allowed_namespaces = [\"default\"]\n")
	via := func(ns string, args ...string) (string, error) {
		return lazyconv(t, append([]string{"--address", stock.address, "--converter-address", sidecar, "--namespace", ns}, args...)...)
	}
	c := stock.client(t)

	// Refused: convert, verify, push, check, capabilities, in a namespace not allowed.
	for _, args := range [][]string{
		{"image", "convert", "--estargz", "--oci", img.name, "example.com/trust/app:esgz"},
		{"image", "verify", img.name},
		{"image", "push", "--plain-http", "127.0.0.1:1/trust/app:v1", img.name},
	} {
		out, err := via("k8s.io", args...)
		require.Error(t, err, "%v:\n%s", args, out)
		assert.Contains(t, out, `namespace "k8s.io" is not served`, args)
	}
	_, err := c.ImageService().Get(nsContext("k8s.io"), "example.com/trust/app:esgz")
	assert.True(t, errdefs.IsNotFound(err), "nothing was converted in k8s.io: %v", err)
	raw := sidecarClient(t, sidecar)
	_, err = raw.Capabilities(nsContext("k8s.io"), &api.CapabilitiesRequest{})
	assert.True(t, errdefs.IsPermissionDenied(errgrpc.ToNative(err)), "PermissionDenied over gRPC: %v", err)
	_, err = raw.CheckEStargz(nsContext("k8s.io"), &api.CheckEStargzRequest{Digest: digest.FromString("x").String()})
	assert.True(t, errdefs.IsPermissionDenied(errgrpc.ToNative(err)), "%v", err)

	// Served: the allowed namespace, and no namespace (checked as "default";
	// Capabilities needs none).
	out, err := via("default", "image", "convert", "--estargz", "--oci", img.name, "example.com/trust/app:esgz")
	require.NoError(t, err, out)
	assertConvertedImage(t, nsContext("default"), c.ContentStore(), c.ImageService(), "example.com/trust/app:esgz", img)
	_, err = raw.Capabilities(context.Background(), &api.CapabilitiesRequest{})
	assert.NoError(t, err)

	// A sidecar serving only k8s.io refuses a request with no namespace.
	only := sidecarClient(t, startSidecarWith(t, stock.address, "allowed_namespaces = [\"k8s.io\"]\n"))
	_, err = only.Capabilities(context.Background(), &api.CapabilitiesRequest{})
	assert.True(t, errdefs.IsPermissionDenied(errgrpc.ToNative(err)), "no namespace is checked as default: %v", err)
	_, err = only.Capabilities(nsContext("k8s.io"), &api.CapabilitiesRequest{})
	assert.NoError(t, err)
}

// Converting onto an existing image lazyconv did not make (here: imported),
// or in place, needs --overwrite; lazyconv's own output is converted onto
// again without it. The same holds for ctr's lazyconv conversions.
func TestSidecarConvertOverwritesOnlyWhenAsked(t *testing.T) {
	requireRoot(t)
	stock := startDaemon(t, bins.stockContainerd, stockConfig)
	img := newTestImage(t, "example.com/trust/app:v1", 0)
	taken := newTestImage(t, "example.com/trust/app:taken", 0)
	mustLazyconv(t, "--address", stock.address, "image", "import", img.archive)
	mustLazyconv(t, "--address", stock.address, "image", "import", taken.archive)
	sidecar := startSidecar(t, stock.address)
	fi, err := os.Stat(sidecar)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o660), fi.Mode().Perm(), "the socket has the configured mode")
	via := func(args ...string) (string, error) {
		return lazyconv(t, append([]string{"--address", stock.address, "--converter-address", sidecar}, args...)...)
	}
	is := stock.client(t).ImageService()
	target := func(name string) string {
		t.Helper()
		i, err := is.Get(nsContext("default"), name)
		require.NoError(t, err)
		return i.Target.Digest.String()
	}
	before := target("example.com/trust/app:taken")

	for _, dst := range []string{"example.com/trust/app:taken", img.name} {
		out, err := via("image", "convert", "--estargz", "--oci", img.name, dst)
		require.Error(t, err, out)
		assert.Contains(t, out, `image "`+dst+`" exists and lazyconv did not make it`)
		assert.Contains(t, out, "--overwrite")
	}
	assert.Equal(t, before, target("example.com/trust/app:taken"), "a refused conversion leaves the target alone")

	out, err := via("image", "convert", "--estargz", "--oci", "--overwrite", "-q", img.name, "example.com/trust/app:taken")
	require.NoError(t, err, out)
	assert.NotEqual(t, before, target("example.com/trust/app:taken"))
	out, err = via("image", "convert", "--zstdchunked", "-q", img.name, "example.com/trust/app:taken")
	require.NoError(t, err, "lazyconv's own output needs no --overwrite:\n%s", out)

	// ctr's conversions run in the plugin, with the same rule.
	d := startDaemon(t, bins.containerdLazyconv, testConfig)
	for _, a := range []string{img.archive, taken.archive} {
		out, err := runCtr(t, d.address, "images", "import", "--local", a)
		require.NoError(t, err, out)
	}
	out, err = runCtr(t, d.address, "images", "convert", "--estargz", "--oci", img.name, "example.com/trust/app:taken")
	require.Error(t, err, out)
	assert.Contains(t, out, "--overwrite")
	out, err = runCtr(t, d.address, "images", "convert", "--estargz", "--oci", "--overwrite", img.name, "example.com/trust/app:taken")
	require.NoError(t, err, out)
}
