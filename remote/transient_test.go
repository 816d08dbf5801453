package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/errdefs"
	"github.com/stretchr/testify/assert"
)

func TestTransient(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"unavailable", fmt.Errorf("x: %w", errdefs.ErrUnavailable), true},
		{"resource exhausted", errdefs.ErrResourceExhausted, true},
		{"registry 503", fmt.Errorf("fetching: %w", remoteerrors.ErrUnexpectedStatus{StatusCode: 503}), true},
		{"registry 429", remoteerrors.ErrUnexpectedStatus{StatusCode: 429}, true},
		{"registry 404", remoteerrors.ErrUnexpectedStatus{StatusCode: 404}, false},
		{"registry 401", remoteerrors.ErrUnexpectedStatus{StatusCode: 401}, false},
		{"refused", &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, true},
		{"reset", fmt.Errorf("read: %w", syscall.ECONNRESET), true},
		{"cut short", fmt.Errorf("copying: %w", io.ErrUnexpectedEOF), true},
		{"deadline", context.DeadlineExceeded, true},
		{"cancelled", fmt.Errorf("x: %w", context.Canceled), false},
		{"invalid", fmt.Errorf("layer climbs out: %w", errdefs.ErrInvalidArgument), false},
		{"not found", errdefs.ErrNotFound, false},
		{"plain", errors.New("what"), false},
	} {
		assert.Equal(t, tc.want, Transient(tc.err), tc.name)
	}
}
