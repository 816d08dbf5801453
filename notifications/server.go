package notifications

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// MaxConcurrentRequests bounds the requests Serve handles at once; a request
// beyond it is answered 503 with "Retry-After: 1".
const MaxConcurrentRequests = 16

// ShutdownTimeout is how long Serve's shutdown waits for requests in flight
// before it closes their connections.
const ShutdownTimeout = 10 * time.Second

// Timeouts of the server Serve runs.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 30 * time.Second
	writeTimeout      = time.Minute
	idleTimeout       = time.Minute
	maxHeaderBytes    = 64 << 10
)

// Handler returns the http.Handler serving Path (other paths are answered
// 404). It takes POST requests only (others: 405), checks the bearer token
// when cfg.Token is set (401), reads at most cfg.MaxBodyBytes (413), parses
// the body as Parse does (400 for a malformed body, 415 for an unknown content
// type with a body of no known format) and calls accept once per request
// with the pushes it holds, unless it holds none (then 200 without calling
// accept).
//
// accept's error sets the answer: errdefs.IsUnavailable or
// errdefs.IsResourceExhausted (and a canceled or timed out context) give 503
// with "Retry-After: 1", so that the registry redelivers;
// errdefs.IsInvalidArgument gives 400; any other error 500; nil 200. Note
// that distribution redelivers on every non-2xx/3xx answer, forever and
// before the endpoint's next events, so accept should return nil for pushes
// it will never take. accept should be quick (queue the work): the registry
// waits only its endpoint timeout (1s by default) for the answer. accept must
// not be nil.
func Handler(cfg Config, accept func(ctx context.Context, pushes []Push) error) http.Handler {
	if accept == nil {
		panic("notifications: Handler with a nil accept")
	}
	h := &handler{accept: accept, maxBody: cfg.maxBodyBytes()}
	if cfg.Token != "" {
		sum := sha256.Sum256([]byte(cfg.Token))
		h.tokenSum = sum[:]
	}
	return h
}

type handler struct {
	accept   func(ctx context.Context, pushes []Push) error
	maxBody  int64
	tokenSum []byte // sha256 of the token, nil: no token required
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != Path {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "method not allowed: POST notifications to "+Path, http.StatusMethodNotAllowed)
		return
	}
	ctx := log.WithLogger(r.Context(), log.G(r.Context()).WithField("remote", r.RemoteAddr))
	if h.tokenSum != nil && !h.authorized(r) {
		log.G(ctx).Debug("notifications: request without the right bearer token")
		w.Header().Set("WWW-Authenticate", `Bearer realm="notifications"`)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	if r.ContentLength > h.maxBody {
		tooLarge(w, h.maxBody)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.maxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			tooLarge(w, h.maxBody)
			return
		}
		http.Error(w, "reading the body: "+err.Error(), http.StatusBadRequest)
		return
	}

	pushes, err := parse(ctx, r.Header.Get("Content-Type"), body)
	if err != nil {
		log.G(ctx).WithError(err).Debug("notifications: notification refused")
		status := http.StatusBadRequest
		if errors.Is(err, ErrUnsupportedContentType) {
			status = http.StatusUnsupportedMediaType
		}
		http.Error(w, err.Error(), status)
		return
	}
	if len(pushes) > 0 {
		if err := h.accept(ctx, pushes); err != nil {
			h.fail(ctx, w, err, len(pushes))
			return
		}
		log.G(ctx).WithField("pushes", len(pushes)).Debug("notifications: pushes accepted")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_ = json.NewEncoder(w).Encode(struct {
		Accepted int `json:"accepted"`
	}{len(pushes)})
}

// authorized tells whether r carries "Authorization: Bearer <token>". Both
// tokens are hashed first, so that the comparison takes the same time
// whatever the length of the token sent.
func (h *handler) authorized(r *http.Request) bool {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(token)))
	return subtle.ConstantTimeCompare(sum[:], h.tokenSum) == 1
}

// fail answers accept's error.
func (h *handler) fail(ctx context.Context, w http.ResponseWriter, err error, n int) {
	entry := log.G(ctx).WithError(err).WithField("pushes", n)
	switch {
	case errdefs.IsUnavailable(err), errdefs.IsResourceExhausted(err),
		errdefs.IsCanceled(err), errdefs.IsDeadlineExceeded(err):
		entry.Info("notifications: pushes deferred, asking for redelivery")
		w.Header().Set("Retry-After", "1")
		http.Error(w, "unavailable, retry: "+err.Error(), http.StatusServiceUnavailable)
	case errdefs.IsInvalidArgument(err):
		entry.Warn("notifications: pushes refused")
		http.Error(w, err.Error(), http.StatusBadRequest)
	default:
		entry.Error("notifications: pushes failed")
		http.Error(w, "internal error", http.StatusInternalServerError)
	}
}

func tooLarge(w http.ResponseWriter, limit int64) {
	http.Error(w, "notification body larger than "+strconv.FormatInt(limit, 10)+" bytes", http.StatusRequestEntityTooLarge)
}

// limit answers 503 to requests beyond n in flight.
func limit(n int, next http.Handler) http.Handler {
	sem := make(chan struct{}, n)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case sem <- struct{}{}:
			defer func() { <-sem }()
			next.ServeHTTP(w, r)
		default:
			w.Header().Set("Retry-After", "1")
			http.Error(w, "too many notifications in flight", http.StatusServiceUnavailable)
		}
	})
}

// Serve listens on cfg.Address and serves Handler(cfg, accept) there, at
// most MaxConcurrentRequests requests at once, until ctx is done; then it
// shuts the server down gracefully (waiting up to ShutdownTimeout for the
// requests in flight; their contexts are not canceled by ctx).
//
// Serve returns once it listens (an error listening is returned), with the
// address it listens on (what ":0" became) and a function that waits until
// the server has stopped, returning why if that was not ctx. When
// cfg.Address is "" the receiver is disabled: Serve returns a nil address and
// a wait function that returns nil at once.
func Serve(ctx context.Context, cfg Config, accept func(ctx context.Context, pushes []Push) error) (net.Addr, func() error, error) {
	if cfg.Address == "" {
		return nil, func() error { return nil }, nil
	}
	handler := limit(MaxConcurrentRequests, Handler(cfg, accept))
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", cfg.Address)
	if err != nil {
		return nil, nil, err
	}
	base := context.WithoutCancel(ctx)
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		BaseContext:       func(net.Listener) context.Context { return base },
		ErrorLog:          stdlog.New(logWriter{base}, "", 0),
	}
	log.G(ctx).WithField("address", ln.Addr().String()).Info("notifications: receiving registry notifications on " + Path)

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	done := make(chan struct{})
	var stopErr error
	go func() {
		defer close(done)
		select {
		case err := <-served:
			stopErr = errors.Join(err, srv.Close())
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(base, ShutdownTimeout)
			err := srv.Shutdown(sctx)
			cancel()
			if err != nil {
				err = errors.Join(err, srv.Close())
			}
			if serr := <-served; !errors.Is(serr, http.ErrServerClosed) {
				err = errors.Join(err, serr)
			}
			stopErr = err
		}
	}()
	return ln.Addr(), func() error {
		<-done
		return stopErr
	}, nil
}

// logWriter sends the http.Server's own error log to the context's logger.
type logWriter struct{ ctx context.Context }

func (l logWriter) Write(p []byte) (int, error) {
	log.G(l.ctx).Warn("notifications: " + strings.TrimSpace(string(p)))
	return len(p), nil
}
