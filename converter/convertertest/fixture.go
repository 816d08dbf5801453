package convertertest

import (
	"bytes"
	"context"
	"maps"
	"slices"
	"sort"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/internal/imagegen"
	"github.com/lazyconv/lazyconv/localstore"
)

// Fixture is a real local store (containerd's bolt metadata over a local
// content store, in a test's temporary directory) with a Converter on it.
type Fixture struct {
	// Ctx is in the fixture's namespace, with no lease.
	Ctx   context.Context
	Store *localstore.Store
	CS    content.Store
	Conv  *converter.Converter
}

var quiet sync.Once

// NewFixture opens a fixture that closes when the test ends.
func NewFixture(t testing.TB, opts ...converter.Option) *Fixture {
	t.Helper()
	// The local content store warns once per store that fsverity is unsupported.
	quiet.Do(func() { _ = log.SetLevel("error") })
	ctx := namespaces.WithNamespace(context.Background(), "test")
	st, err := localstore.Open(ctx, t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	conv, err := converter.New(st.ContentStore(), st.LeaseManager(), opts...)
	require.NoError(t, err)
	return &Fixture{Ctx: ctx, Store: st, CS: st.ContentStore(), Conv: conv}
}

// ContentState lists every blob with its labels, and every ingest, to
// compare store states.
func (f *Fixture) ContentState(t testing.TB) []string {
	t.Helper()
	return contentState(t, f.Ctx, f.CS)
}

// StoreState lists everything a refused conversion must leave as it was:
// blobs with their labels, ingests, images and leases. It works on any
// containerd stores (a fixture's, or a daemon's through its client).
func StoreState(t testing.TB, ctx context.Context, cs content.Store, is images.Store, lm leases.Manager) []string {
	t.Helper()
	out := contentState(t, ctx, cs)
	imgs, err := is.List(ctx)
	require.NoError(t, err)
	for _, img := range imgs {
		out = append(out, "image "+img.Name+" "+img.Target.Digest.String())
	}
	ls, err := lm.List(ctx)
	require.NoError(t, err)
	for _, l := range ls {
		out = append(out, "lease "+l.ID)
	}
	sort.Strings(out)
	return out
}

func contentState(t testing.TB, ctx context.Context, cs content.Store) []string {
	t.Helper()
	var out []string
	require.NoError(t, cs.Walk(ctx, func(info content.Info) error {
		line := info.Digest.String()
		for _, k := range slices.Sorted(maps.Keys(info.Labels)) {
			line += " " + k + "=" + info.Labels[k]
		}
		out = append(out, line)
		return nil
	}))
	sts, err := cs.ListStatuses(ctx)
	require.NoError(t, err)
	for _, st := range sts {
		out = append(out, "ingest "+st.Ref)
	}
	sort.Strings(out)
	return out
}

// GC collects garbage as containerd's scheduler would.
func (f *Fixture) GC(t testing.TB) {
	t.Helper()
	_, err := f.Store.GarbageCollect(f.Ctx)
	require.NoError(t, err)
}

// PutBlob stores blob with the given media type and labels.
func (f *Fixture) PutBlob(t testing.TB, blob []byte, mediaType string, lbls map[string]string) ocispec.Descriptor {
	t.Helper()
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	require.NoError(t, content.WriteBlob(f.Ctx, f.CS, "test-"+desc.Digest.String(), bytes.NewReader(blob), desc, content.WithLabels(lbls)))
	return desc
}

// PutLayer stores a tar as an OCI layer with the given compression ("",
// "gzip" or "zstd").
func (f *Fixture) PutLayer(t testing.TB, tarball []byte, compression string) ocispec.Descriptor {
	t.Helper()
	mt := ocispec.MediaTypeImageLayer
	if compression != "" {
		mt += "+" + compression
	}
	return f.PutBlob(t, imagegen.Compress(tarball, compression), mt, nil)
}
