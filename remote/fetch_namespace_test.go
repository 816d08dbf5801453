package remote

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/localstore"
)

// blobRegistry is a minimal OCI distribution registry serving one blob of
// one repository. It asks for basic credentials and counts the GETs of the
// blob by user name, so that each namespace's fetch (each with credentials
// of its own) is told apart. A GET sends its headers at once and holds its
// body until release is closed or the client goes away, so that fetches
// overlap for as long as a test needs.
type blobRegistry struct {
	srv     *httptest.Server
	repo    string
	blob    []byte
	desc    ocispec.Descriptor
	arrived chan string // the user of each GET of the blob, as it arrives

	release     chan struct{}
	releaseOnce sync.Once

	mu   sync.Mutex
	gets map[string]int
}

func newBlobRegistry(t *testing.T) *blobRegistry {
	t.Helper()
	blob := []byte(strings.Repeat("a layer fetched once per namespace\n", 64))
	r := &blobRegistry{
		repo:    "lazy/app",
		blob:    blob,
		desc:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(blob), Size: int64(len(blob))},
		arrived: make(chan string, 16),
		release: make(chan struct{}),
		gets:    map[string]int{},
	}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	// Cleanups run last first: the held bodies are let go before Close waits for them.
	t.Cleanup(r.releaseBodies)
	return r
}

func (r *blobRegistry) releaseBodies() { r.releaseOnce.Do(func() { close(r.release) }) }

func (r *blobRegistry) ref() string { return r.srv.Listener.Addr().String() + "/" + r.repo }

func (r *blobRegistry) source() Source {
	return Source{Host: r.srv.Listener.Addr().String(), Repository: r.repo}
}

// getsBy is how many GETs of the blob user made.
func (r *blobRegistry) getsBy(user string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gets[user]
}

func (r *blobRegistry) serve(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	}
	if req.URL.Path == "/v2/" {
		w.WriteHeader(http.StatusOK)
		return
	}
	if req.URL.Path != "/v2/"+r.repo+"/blobs/"+r.desc.Digest.String() {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	user, _, ok := req.BasicAuth()
	if !ok {
		w.Header().Set("WWW-Authenticate", `Basic realm="lazyconv-test"`)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(r.blob)))
	w.Header().Set("Docker-Content-Digest", r.desc.Digest.String())
	if req.Method == http.MethodHead {
		w.WriteHeader(http.StatusOK)
		return
	}
	r.mu.Lock()
	r.gets[user]++
	r.mu.Unlock()
	r.arrived <- user
	w.WriteHeader(http.StatusOK)
	w.(http.Flusher).Flush()
	select {
	case <-r.release:
		_, _ = w.Write(r.blob)
	case <-req.Context().Done():
	}
}

// awaitGet waits for the next GET of the blob to arrive and returns its user,
// or "" after wait.
func (r *blobRegistry) awaitGet(wait time.Duration) string {
	select {
	case user := <-r.arrived:
		return user
	case <-time.After(wait):
		return ""
	}
}

// newCaller returns a context in namespace ns holding a new lease of ns.
func newCaller(t *testing.T, st *localstore.Store, ns string) (context.Context, leases.Lease) {
	t.Helper()
	ctx := namespaces.WithNamespace(context.Background(), ns)
	l, err := st.LeaseManager().Create(ctx, leases.WithRandomID())
	require.NoError(t, err)
	return leases.WithLease(ctx, l.ID), l
}

// ensureAsync runs EnsureFrom for ns, with credentials of ns's own, and
// reports its error on the returned channel.
func ensureAsync(ctx context.Context, f *Fetcher, reg *blobRegistry, ns string) <-chan error {
	resolver := RegistryOptions{PlainHTTP: true, Username: ns, Password: "pw-" + ns}.ResolverFor(reg.ref())
	done := make(chan error, 1)
	go func() { done <- f.EnsureFrom(ctx, resolver, reg.desc, reg.source(), nil) }()
	return done
}

func awaitErr(t *testing.T, done <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(20 * time.Second):
		t.Fatalf("%s did not return", what)
		return nil
	}
}

// assertHeld asserts that the blob is in ns (ctx's namespace), labelled
// with the registry it came from, and held by ns's lease.
func assertHeld(t *testing.T, st *localstore.Store, ctx context.Context, l leases.Lease, reg *blobRegistry) {
	t.Helper()
	ns, _ := namespaces.Namespace(ctx)
	info, err := st.ContentStore().Info(ctx, reg.desc.Digest)
	require.NoError(t, err, "blob not visible in namespace %q", ns)
	assert.True(t, Pulled(info, reg.source()), "namespace %q: no distribution-source label for %v: %v", ns, reg.source(), info.Labels)
	res, err := st.LeaseManager().ListResources(ctx, l)
	require.NoError(t, err)
	assert.Contains(t, res, leases.Resource{ID: reg.desc.Digest.String(), Type: "content"}, "namespace %q's lease does not hold the blob", ns)
}

// TestFetcherNamespacesFetchTheSameBlobEachForItself proves that two
// conversions in different namespaces ensuring the same missing blob at the
// same time both end up with it in their own namespace: B does not wait on
// A's flight (which commits the blob in A only, where B cannot see it) but
// fetches for itself, once, with its own credentials. With the fetch
// de-duplicated by digest alone, B shares A's result and finds nothing.
func TestFetcherNamespacesFetchTheSameBlobEachForItself(t *testing.T) {
	reg := newBlobRegistry(t)
	st, err := localstore.Open(context.Background(), t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	f := NewFetcher(st.ContentStore(), st.LeaseManager())

	ctxA, leaseA := newCaller(t, st, "a")
	ctxB, leaseB := newCaller(t, st, "b")

	doneA := ensureAsync(ctxA, f, reg, "a")
	require.Equal(t, "a", reg.awaitGet(20*time.Second), "a's fetch did not reach the registry")
	// A's fetch is under way and held: B asks for the same blob meanwhile.
	doneB := ensureAsync(ctxB, f, reg, "b")
	assert.Equal(t, "b", reg.awaitGet(2*time.Second), "b did not fetch while a's fetch of the same blob was under way")
	reg.releaseBodies()

	require.NoError(t, awaitErr(t, doneA, "a's EnsureFrom"))
	require.NoError(t, awaitErr(t, doneB, "b's EnsureFrom"))
	assertHeld(t, st, ctxA, leaseA, reg)
	assertHeld(t, st, ctxB, leaseB, reg)
	assert.Equal(t, 1, reg.getsBy("a"), "GETs with a's credentials")
	assert.Equal(t, 1, reg.getsBy("b"), "GETs with b's credentials")
	assert.Equal(t, int64(2), f.Fetched(), "one fetch per namespace")

	// Now local in both: asking again fetches nothing.
	require.NoError(t, awaitErr(t, ensureAsync(ctxB, f, reg, "b"), "b's second EnsureFrom"))
	assert.Equal(t, 1, reg.getsBy("b"))
	assert.Equal(t, int64(2), f.Fetched())
}

// TestFetcherNamespaceOutlivesAnotherNamespacesCancelledFetch proves that
// cancelling one conversion's fetch does not fail another namespace's
// conversion that asked for the same blob meanwhile: A gets its
// cancellation and keeps nothing, B fetches the blob for itself and has it.
// With the fetch de-duplicated by digest alone, B waits on A's flight and
// inherits A's context.Canceled.
func TestFetcherNamespaceOutlivesAnotherNamespacesCancelledFetch(t *testing.T) {
	reg := newBlobRegistry(t)
	st, err := localstore.Open(context.Background(), t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	f := NewFetcher(st.ContentStore(), st.LeaseManager())

	ctxA, _ := newCaller(t, st, "a")
	ctxA, cancelA := context.WithCancel(ctxA)
	defer cancelA()
	ctxB, leaseB := newCaller(t, st, "b")

	doneA := ensureAsync(ctxA, f, reg, "a")
	require.Equal(t, "a", reg.awaitGet(20*time.Second), "a's fetch did not reach the registry")
	doneB := ensureAsync(ctxB, f, reg, "b")
	assert.Equal(t, "b", reg.awaitGet(2*time.Second), "b did not fetch while a's fetch of the same blob was under way")

	// A is cancelled mid-body, while B is still waiting for its own.
	cancelA()
	errA := awaitErr(t, doneA, "a's EnsureFrom")
	require.ErrorIs(t, errA, context.Canceled)
	reg.releaseBodies()

	require.NoError(t, awaitErr(t, doneB, "b's EnsureFrom"), "b inherited a's cancellation")
	assertHeld(t, st, ctxB, leaseB, reg)

	// A kept nothing: no blob, no half-written ingest.
	plainA := namespaces.WithNamespace(context.Background(), "a")
	_, err = st.ContentStore().Info(plainA, reg.desc.Digest)
	assert.True(t, errdefs.IsNotFound(err), "blob in a after a's fetch was cancelled: %v", err)
	statuses, err := st.ContentStore().ListStatuses(plainA)
	require.NoError(t, err)
	assert.Empty(t, statuses, "a's cancelled ingest was not aborted")

	assert.Equal(t, 1, reg.getsBy("a"), "GETs with a's credentials")
	assert.Equal(t, 1, reg.getsBy("b"), "GETs with b's credentials")
	assert.Equal(t, int64(1), f.Fetched(), "only b's fetch completed")
}
