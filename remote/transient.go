package remote

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"syscall"

	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/errdefs"
)

// Transient says whether err is a failure that trying again later may mend:
// errdefs' Unavailable and ResourceExhausted, a registry answering 5xx, 429
// or 408, a network error (refused, reset, timed out, cut short). Invalid
// input, a missing image, a refused credential, a conflict are not: trying
// again gives the same answer. A cancelled context is not either: whoever
// cancelled it is stopping.
func Transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if errdefs.IsUnavailable(err) || errdefs.IsResourceExhausted(err) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var status remoteerrors.ErrUnexpectedStatus
	if errors.As(err, &status) {
		return status.StatusCode >= 500 || status.StatusCode == http.StatusTooManyRequests || status.StatusCode == http.StatusRequestTimeout
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return true
	}
	for _, e := range []error{syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.EPIPE, syscall.ETIMEDOUT, io.ErrUnexpectedEOF} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
