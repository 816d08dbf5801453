package service

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestIdleReleaseRunsOnlyOnceIdle(t *testing.T) {
	var released atomic.Int32
	r := newIdleReleaser(time.Second)
	r.release = func() { released.Add(1) }
	releasedTo := func(n int32) func() bool { return func() bool { return released.Load() == n } }

	r.begin()
	r.begin()
	r.end()
	time.Sleep(1500 * time.Millisecond)
	assert.Zero(t, released.Load(), "nothing is released while a conversion runs (no timer is armed)")

	r.end()
	require.Eventually(t, releasedTo(1), 10*time.Second, 10*time.Millisecond, "released once idle")

	// A conversion starting before the delay is over cancels the release.
	r.begin()
	r.end()
	r.begin()
	time.Sleep(1500 * time.Millisecond)
	assert.Equal(t, int32(1), released.Load())
	r.end()
	require.Eventually(t, releasedTo(2), 10*time.Second, 10*time.Millisecond)
}
