package notifications

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// recorder is an accept callback that records what it is given.
type recorder struct {
	mu    sync.Mutex
	calls [][]Push
	err   error
}

func (r *recorder) accept(_ context.Context, pushes []Push) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, pushes)
	return r.err
}

func (r *recorder) got() [][]Push {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls
}

func post(t *testing.T, h http.Handler, contentType string, body []byte, header ...string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

var v3Push = Push{
	Host: "127.0.0.1:5000", Repository: "team/app", Tag: "v1", Digest: dIndex,
	MediaType: "application/vnd.oci.image.index.v1+json",
}

func TestHandlerDelivers(t *testing.T) {
	// What distribution v3 sends for a push: one request per event.
	var rec recorder
	h := Handler(Config{}, rec.accept)
	for _, file := range []string{
		"distribution-v3-push-blob.json",
		"distribution-v3-mount-blob.json",
		"distribution-v3-push-index-tag.json",
		"distribution-v3-pull-manifest.json",
		"distribution-v3-delete-manifest.json",
	} {
		w := post(t, h, MediaTypeDistributionEventsV2, readFixture(t, file))
		assert.Equal(t, http.StatusOK, w.Code, file)
	}
	assert.Equal(t, [][]Push{{v3Push}}, rec.got(), "accept is called for the manifest push only")

	w := post(t, h, "application/json", readFixture(t, "harbor-push-tag.json"))
	assert.Equal(t, http.StatusOK, w.Code)
	assert.JSONEq(t, `{"accepted":1}`, w.Body.String())
	require.Len(t, rec.got(), 2)
	assert.Equal(t, []Push{{Host: "harbor.example.com", Repository: "library/app", Tag: "v1", Digest: dHarbor1}}, rec.got()[1])
}

func TestHandlerStatus(t *testing.T) {
	pushBody := readFixture(t, "distribution-v3-push-index-tag.json")
	for _, tc := range []struct {
		name        string
		cfg         Config
		method      string
		path        string
		contentType string
		body        []byte
		header      []string
		acceptErr   error
		status      int
		accepted    bool // accept was called
		retryAfter  bool
	}{
		{name: "push", body: pushBody, status: http.StatusOK, accepted: true},
		{name: "GET", method: http.MethodGet, status: http.StatusMethodNotAllowed},
		{name: "PUT", method: http.MethodPut, body: pushBody, status: http.StatusMethodNotAllowed},
		{name: "other path", path: "/notifications/x", body: pushBody, status: http.StatusNotFound},
		{name: "token missing", cfg: Config{Token: "s3cret"}, body: pushBody, status: http.StatusUnauthorized},
		{name: "token wrong", cfg: Config{Token: "s3cret"}, body: pushBody, header: []string{"Authorization", "Bearer s3cres"}, status: http.StatusUnauthorized},
		{name: "token longer", cfg: Config{Token: "s3cret"}, body: pushBody, header: []string{"Authorization", "Bearer s3cret2"}, status: http.StatusUnauthorized},
		{name: "token as basic", cfg: Config{Token: "s3cret"}, body: pushBody, header: []string{"Authorization", "Basic s3cret"}, status: http.StatusUnauthorized},
		{name: "token right", cfg: Config{Token: "s3cret"}, body: pushBody, header: []string{"Authorization", "Bearer s3cret"}, status: http.StatusOK, accepted: true},
		{name: "token right, scheme in lowercase", cfg: Config{Token: "s3cret"}, body: pushBody, header: []string{"Authorization", "bearer s3cret"}, status: http.StatusOK, accepted: true},
		{name: "body too large", cfg: Config{MaxBodyBytes: 100}, body: pushBody, status: http.StatusRequestEntityTooLarge},
		{name: "body at the default limit", body: bytes.Repeat([]byte(" "), int(DefaultMaxBodyBytes)+1), status: http.StatusRequestEntityTooLarge},
		{name: "not JSON", body: []byte("{"), status: http.StatusBadRequest},
		{name: "unknown content type", contentType: "text/plain", body: []byte("hello"), status: http.StatusUnsupportedMediaType},
		{name: "unknown content type, known body", contentType: "text/plain", body: pushBody, status: http.StatusOK, accepted: true},
		{name: "no pushes", body: readFixture(t, "distribution-v3-pull-manifest.json"), status: http.StatusOK},
		{name: "unavailable", body: pushBody, acceptErr: fmt.Errorf("queue full: %w", errdefs.ErrUnavailable), status: http.StatusServiceUnavailable, accepted: true, retryAfter: true},
		{name: "resource exhausted", body: pushBody, acceptErr: errdefs.ErrResourceExhausted, status: http.StatusServiceUnavailable, accepted: true, retryAfter: true},
		{name: "canceled", body: pushBody, acceptErr: context.Canceled, status: http.StatusServiceUnavailable, accepted: true, retryAfter: true},
		{name: "invalid argument", body: pushBody, acceptErr: errdefs.ErrInvalidArgument, status: http.StatusBadRequest, accepted: true},
		{name: "other error", body: pushBody, acceptErr: errors.New("boom"), status: http.StatusInternalServerError, accepted: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := recorder{err: tc.acceptErr}
			h := Handler(tc.cfg, rec.accept)
			method, path, ct := tc.method, tc.path, tc.contentType
			if method == "" {
				method = http.MethodPost
			}
			if path == "" {
				path = Path
			}
			if ct == "" {
				ct = MediaTypeDistributionEventsV2
			}
			req := httptest.NewRequest(method, path, bytes.NewReader(tc.body))
			req.Header.Set("Content-Type", ct)
			for i := 0; i+1 < len(tc.header); i += 2 {
				req.Header.Set(tc.header[i], tc.header[i+1])
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)

			assert.Equal(t, tc.status, w.Code, w.Body.String())
			assert.Equal(t, tc.accepted, len(rec.got()) > 0)
			if tc.accepted {
				assert.Equal(t, [][]Push{{v3Push}}, rec.got())
			}
			if tc.retryAfter {
				assert.Equal(t, "1", w.Header().Get("Retry-After"))
			} else {
				assert.Empty(t, w.Header().Get("Retry-After"))
			}
			switch tc.status {
			case http.StatusMethodNotAllowed:
				assert.Equal(t, http.MethodPost, w.Header().Get("Allow"))
			case http.StatusUnauthorized:
				assert.Contains(t, w.Header().Get("WWW-Authenticate"), "Bearer")
			case http.StatusInternalServerError:
				assert.NotContains(t, w.Body.String(), "boom", "internal errors are not told to the sender")
			}
		})
	}
}

// A body without Content-Length (chunked) is bounded while read.
func TestHandlerBodyTooLargeChunked(t *testing.T) {
	var rec recorder
	h := Handler(Config{MaxBodyBytes: 64}, rec.accept)
	req := httptest.NewRequest(http.MethodPost, Path, io.MultiReader(strings.NewReader(`{"events":[`), strings.NewReader(strings.Repeat(" ", 100))))
	req.ContentLength = -1
	req.Header.Set("Content-Type", MediaTypeDistributionEventsV2)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	assert.Equal(t, http.StatusRequestEntityTooLarge, w.Code)
	assert.Empty(t, rec.got())
}

func TestLimit(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 2)
	h := limit(2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
	}))
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, Path, nil))
		}()
	}
	<-entered
	<-entered
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, Path, nil))
	assert.Equal(t, http.StatusServiceUnavailable, w.Code)
	assert.Equal(t, "1", w.Header().Get("Retry-After"))
	close(release)
	wg.Wait()
}

func TestServe(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var rec recorder
	addr, wait, err := Serve(ctx, Config{Address: "127.0.0.1:0", Token: "t0ken"}, rec.accept)
	require.NoError(t, err)
	require.NotNil(t, addr)
	url := "http://" + addr.String() + Path

	client := &http.Client{Timeout: 5 * time.Second}
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(readFixture(t, "distribution-v3-push-index-tag.json")))
	require.NoError(t, err)
	req.Header.Set("Content-Type", MediaTypeDistributionEventsV2)
	req.Header.Set("Authorization", "Bearer t0ken")
	resp, err := client.Do(req)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	require.NoError(t, resp.Body.Close())
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, [][]Push{{v3Push}}, rec.got())

	cancel()
	done := make(chan error, 1)
	go func() { done <- wait() }()
	select {
	case err := <-done:
		assert.NoError(t, err)
	case <-time.After(ShutdownTimeout):
		t.Fatal("Serve did not shut down")
	}
	_, err = net.DialTimeout("tcp", addr.String(), time.Second)
	assert.Error(t, err, "the listener is closed")
}

// Shutdown waits for a request in flight, whose context ctx does not cancel.
func TestServeGracefulShutdown(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	entered, release := make(chan struct{}), make(chan struct{})
	ctxErr := make(chan error, 1)
	addr, wait, err := Serve(ctx, Config{Address: "127.0.0.1:0"}, func(ctx context.Context, pushes []Push) error {
		close(entered)
		<-release
		ctxErr <- ctx.Err()
		return nil
	})
	require.NoError(t, err)

	status := make(chan int, 1)
	go func() {
		resp, err := http.Post("http://"+addr.String()+Path, MediaTypeDistributionEventsV2, bytes.NewReader(readFixture(t, "distribution-v3-push-index-tag.json")))
		if err != nil {
			status <- 0
			return
		}
		_ = resp.Body.Close()
		status <- resp.StatusCode
	}()
	<-entered
	cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- wait() }()
	select {
	case <-stopped:
		t.Fatal("Serve stopped with a request in flight")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	assert.Equal(t, http.StatusOK, <-status)
	assert.NoError(t, <-stopped)
	assert.NoError(t, <-ctxErr)
}

func TestServeDisabled(t *testing.T) {
	addr, wait, err := Serve(context.Background(), Config{}, (&recorder{}).accept)
	require.NoError(t, err)
	assert.Nil(t, addr)
	assert.NoError(t, wait())
}

func TestServeListenError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	_, _, err = Serve(context.Background(), Config{Address: ln.Addr().String()}, (&recorder{}).accept)
	assert.Error(t, err)
}
