package service_test

import (
	"encoding/json"
	"net"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/internal/imagegen"
	"github.com/lazyconv/lazyconv/remote"
	"github.com/lazyconv/lazyconv/service"
)

// A layer that is not local and whose registry cannot be reached now is
// Unavailable (a rule retries it), not NotFound (a rule would give it up for
// good).
func TestAMissingLayerOfAnUnreachableRegistryIsTransient(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	host := l.Addr().String()
	require.NoError(t, l.Close()) // nothing listens there now: refused
	f := newFixture(t, service.DefaultConfig())
	name := host + "/team/app:v1"
	img := imagegen.Image{Name: name, Layers: []imagegen.Layer{{MediaType: ocispec.MediaTypeImageLayerGzip,
		Blob: imagegen.Compress(imagegen.TarBytes([]imagegen.Entry{file("a", "alpha")}), "gzip")}}}
	target, err := imagegen.Store(f.ctx, f.store.ContentStore(), f.store.ImageStore(), img)
	require.NoError(t, err)
	var manifest ocispec.Manifest
	b, err := content.ReadBlob(f.ctx, f.store.ContentStore(), target)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &manifest))
	require.NoError(t, f.store.ContentStore().Delete(f.ctx, manifest.Layers[0].Digest))

	err = f.svc.ConvertImage(f.ctx, &api.ConvertRequest{Source: name, Target: name + "-esgz", Format: "estargz", Oci: true},
		func(*api.ConvertEvent) error { return nil })
	require.Error(t, err)
	assert.True(t, errdefs.IsUnavailable(err), "%v", err)
	assert.True(t, remote.Transient(err))
	assert.Contains(t, err.Error(), "could be had from nowhere")
}
