// Command referrersregistry serves go-containerregistry's registry
// (pkg/registry) with the OCI referrers API on, on 127.0.0.1, for the
// integration tests: a registry that lists referrers itself, where
// distribution v3 (the tests' other registry) has no referrers API and
// clients keep the referrers tag schema.
//
// It logs every request in distribution's access log format
// (`HOST - - [TIME] "METHOD URI PROTO" STATUS BYTES "REFERER" "AGENT"`), so
// that the tests read both registries' logs alike, and adds the response's
// OCI-Subject and OCI-Filters-Applied headers to the line when it has them.
//
// What go-containerregistry v0.22.1's referrers API does differently from
// the distribution spec (v1.1) is written down in integration/fleet_test.go.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "address to listen on (port 0: a free one)")
	addrFile := flag.String("addr-file", "", "file to write the listening address (host:port) to once listening")
	accessLog := flag.String("access-log", "", "file to append the request log to (default stderr)")
	blobs := flag.String("blobs", "", "directory to keep blobs in (default memory)")
	referrers := flag.Bool("referrers", true, "serve the OCI referrers API")
	flag.Parse()
	if err := run(*addr, *addrFile, *accessLog, *blobs, *referrers); err != nil {
		fmt.Fprintln(os.Stderr, "referrersregistry:", err)
		os.Exit(1)
	}
}

func run(addr, addrFile, accessLog, blobs string, referrers bool) error {
	var out io.Writer = os.Stderr
	if accessLog != "" {
		f, err := os.OpenFile(accessLog, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		out = f
	}
	opts := []registry.Option{
		registry.WithReferrersSupport(referrers),
		// Its own log (one line per request and error) goes to stderr, apart
		// from the access log the tests read.
		registry.Logger(log.New(os.Stderr, "registry: ", log.LstdFlags)),
	}
	if blobs != "" {
		if err := os.MkdirAll(blobs, 0o755); err != nil {
			return err
		}
		opts = append(opts, registry.WithBlobHandler(registry.NewDiskBlobHandler(blobs)))
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	if addrFile != "" {
		// Written whole (a rename), so a reader never sees half an address.
		tmp := filepath.Join(filepath.Dir(addrFile), "."+filepath.Base(addrFile)+".tmp")
		if err := os.WriteFile(tmp, []byte(l.Addr().String()+"\n"), 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, addrFile); err != nil {
			return err
		}
	} else {
		fmt.Println(l.Addr().String())
	}
	srv := &http.Server{
		Handler:           &accessLogger{next: registry.New(opts...), out: out},
		ReadHeaderTimeout: 10 * time.Second,
	}
	return srv.Serve(l)
}

// accessLogger writes one line per request, once it is answered.
type accessLogger struct {
	next http.Handler
	mu   sync.Mutex
	out  io.Writer
}

func (a *accessLogger) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := &recorder{ResponseWriter: w, status: http.StatusOK}
	a.next.ServeHTTP(rec, r)
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	line := fmt.Sprintf("%s - - [%s] %q %d %d %q %q", host, time.Now().Format("02/Jan/2006:15:04:05 -0700"),
		r.Method+" "+r.RequestURI+" "+r.Proto, rec.status, rec.bytes, r.Referer(), r.UserAgent())
	for _, h := range []string{"OCI-Subject", "OCI-Filters-Applied"} {
		if v := w.Header().Get(h); v != "" {
			line += fmt.Sprintf(" %s=%q", h, v)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	_, _ = io.WriteString(a.out, line+"\n")
}

// recorder keeps the status and the size of a response.
type recorder struct {
	http.ResponseWriter
	status      int
	bytes       int64
	wroteHeader bool
}

func (r *recorder) WriteHeader(status int) {
	if !r.wroteHeader {
		r.status, r.wroteHeader = status, true
	}
	r.ResponseWriter.WriteHeader(status)
}

func (r *recorder) Write(b []byte) (int, error) {
	r.wroteHeader = true
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}
