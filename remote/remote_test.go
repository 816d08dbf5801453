package remote_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/labels"
	"github.com/lazyconv/lazyconv/localstore"
	"github.com/lazyconv/lazyconv/remote"
)

func TestMain(m *testing.M) {
	_ = log.SetLevel("error")
	os.Exit(m.Run())
}

func newStore(t *testing.T) (context.Context, *localstore.Store) {
	t.Helper()
	ctx := namespaces.WithNamespace(context.Background(), "test")
	st, err := localstore.Open(ctx, t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	return ctx, st
}

func put(t *testing.T, ctx context.Context, cs content.Store, blob []byte, mt string) ocispec.Descriptor {
	t.Helper()
	desc := ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	require.NoError(t, content.WriteBlob(ctx, cs, "t-"+desc.Digest.String(), bytes.NewReader(blob), desc))
	return desc
}

func TestAddSourceMergesWithoutDuplicates(t *testing.T) {
	ctx, st := newStore(t)
	cs := st.ContentStore()
	d := put(t, ctx, cs, []byte("blob"), "application/octet-stream").Digest
	for _, s := range []remote.Source{
		{Host: "registry.example", Repository: "team/b"},
		{Host: "registry.example", Repository: "team/a"},
		{Host: "registry.example", Repository: "team/b"},
		{Host: "other.example:5000", Repository: "x"},
	} {
		require.NoError(t, remote.AddSource(ctx, cs, d, s))
	}
	info, err := cs.Info(ctx, d)
	require.NoError(t, err)
	assert.Equal(t, "team/a,team/b", info.Labels[labels.DistributionSourcePrefix+"registry.example"])
	// Keyed by host name without the port, as containerd does (its pusher
	// mounts from that label), and with the port, so that lookups and
	// fetches reach a registry on a port of its own; listed once, with it.
	assert.Equal(t, "x", info.Labels[labels.DistributionSourcePrefix+"other.example"])
	assert.Equal(t, "x", info.Labels[labels.DistributionSourcePrefix+"other.example:5000"])
	assert.Equal(t, []remote.Source{
		{Host: "other.example:5000", Repository: "x"},
		{Host: "registry.example", Repository: "team/a"},
		{Host: "registry.example", Repository: "team/b"},
	}, remote.Sources(info))
	assert.Equal(t, "other.example:5000/x@"+d.String(), remote.Sources(info)[0].Ref(d))
}

// A blob in more repositories of one registry than containerd's label
// limit (4096 bytes) can list (the empty JSON every referrer shares) is
// recorded in those that fit, and recording more is no error: a pull of
// the next repository holding it must not fail on it.
func TestAddSourceBeyondTheLabelLimit(t *testing.T) {
	ctx, st := newStore(t)
	cs := st.ContentStore()
	d := put(t, ctx, cs, []byte("{}"), "application/vnd.oci.empty.v1+json").Digest
	for i := range 600 {
		require.NoError(t, remote.AddSource(ctx, cs, d, remote.Source{Host: "127.0.0.1:5000", Repository: fmt.Sprintf("notified/app%04d", i)}))
	}
	info, err := cs.Info(ctx, d)
	require.NoError(t, err)
	listed := info.Labels[labels.DistributionSourcePrefix+"127.0.0.1:5000"]
	assert.LessOrEqual(t, len(labels.DistributionSourcePrefix+"127.0.0.1:5000")+len(listed), 4096)
	assert.Contains(t, listed, "notified/app0000")
}

func TestSourceOf(t *testing.T) {
	for _, tc := range []struct {
		ref  string
		want remote.Source
		bad  bool
	}{
		{"registry.example/team/app:v1", remote.Source{Host: "registry.example", Repository: "team/app"}, false},
		{"127.0.0.1:5000/lazy/app@sha256:abc", remote.Source{Host: "127.0.0.1:5000", Repository: "lazy/app"}, false},
		{"localhost/app", remote.Source{Host: "localhost", Repository: "app"}, false},
		{"app:v1", remote.Source{}, true},
	} {
		got, err := remote.SourceOf(tc.ref)
		if tc.bad {
			assert.Error(t, err, tc.ref)
			continue
		}
		require.NoError(t, err, tc.ref)
		assert.Equal(t, tc.want, got)
	}
}
