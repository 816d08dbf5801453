package service

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestIdleReleaseRunsOnlyOnceIdle(t *testing.T) {
	var released atomic.Int32
	r := newIdleReleaser(50 * time.Millisecond)
	r.release = func() { released.Add(1) }

	r.begin()
	r.begin()
	r.end()
	time.Sleep(120 * time.Millisecond)
	assert.Zero(t, released.Load(), "nothing is released while a conversion runs")

	r.end()
	assert.Zero(t, released.Load(), "not at once")
	time.Sleep(120 * time.Millisecond)
	assert.Equal(t, int32(1), released.Load(), "released once idle")

	r.begin() // a conversion starting before the delay cancels the release
	r.end()
	r.begin()
	time.Sleep(120 * time.Millisecond)
	assert.Equal(t, int32(1), released.Load())
	r.end()
	time.Sleep(120 * time.Millisecond)
	assert.Equal(t, int32(2), released.Load())
}
