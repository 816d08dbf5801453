package converter_test

import (
	"context"
	"os"
	"sort"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/log"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/localstore"
)

// fixture is a real local store (containerd's bolt metadata over a local
// content store) with a Converter on it.
type fixture struct {
	ctx   context.Context
	store *localstore.Store
	cs    content.Store
	conv  *converter.Converter
}

func newFixture(t testing.TB, opts ...converter.Option) *fixture {
	t.Helper()
	ctx := namespaces.WithNamespace(context.Background(), "test")
	st, err := localstore.Open(ctx, t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	conv, err := converter.New(st.ContentStore(), st.LeaseManager(), opts...)
	require.NoError(t, err)
	return &fixture{ctx: ctx, store: st, cs: st.ContentStore(), conv: conv}
}

// contentState lists every blob with its labels, to compare store states.
func (f *fixture) contentState(t testing.TB) []string {
	t.Helper()
	var out []string
	require.NoError(t, f.cs.Walk(f.ctx, func(info content.Info) error {
		line := info.Digest.String()
		keys := make([]string, 0, len(info.Labels))
		for k := range info.Labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			line += " " + k + "=" + info.Labels[k]
		}
		out = append(out, line)
		return nil
	}))
	sort.Strings(out)
	return out
}

func (f *fixture) gc(t testing.TB) {
	t.Helper()
	_, err := f.store.GarbageCollect(f.ctx)
	require.NoError(t, err)
}

func namespacesCtx(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, "test")
}

func TestMain(m *testing.M) {
	// The local content store warns once per store that fsverity is unsupported.
	_ = log.SetLevel("error")
	os.Exit(m.Run())
}
