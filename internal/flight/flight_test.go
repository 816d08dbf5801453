package flight

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestFlightRunsOnceAndReleasesAfterEveryAdopt(t *testing.T) {
	var runs, adopts, releases atomic.Int32
	var adoptsAtRelease int32
	g := Group[int]{Release: func(int) {
		adoptsAtRelease = adopts.Load()
		releases.Add(1)
	}}
	gate := make(chan struct{})
	var wg sync.WaitGroup
	const n = 20
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, _, err := g.Do(t.Context(), "k", func(context.Context) (int, error) {
				runs.Add(1)
				<-gate
				return 42, nil
			}, func(int) error { adopts.Add(1); return nil })
			assert.NoError(t, err)
			assert.Equal(t, 42, v)
		}()
	}
	// Give every caller time to join the flight before it lands.
	require.Eventually(t, func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		f := g.calls["k"]
		return f != nil && f.waiters == n
	}, 5*time.Second, time.Millisecond)
	close(gate)
	wg.Wait()
	assert.Equal(t, int32(1), runs.Load())
	assert.Equal(t, int32(n), adopts.Load())
	assert.Equal(t, int32(1), releases.Load())
	assert.Equal(t, int32(n), adoptsAtRelease, "release waits for every adopt")
}

func TestFlightSurvivesOneCallerCancelling(t *testing.T) {
	g := Group[string]{}
	gate := make(chan struct{})
	var workErr atomic.Value
	fn := func(ctx context.Context) (string, error) {
		select {
		case <-gate:
			return "done", nil
		case <-ctx.Done():
			workErr.Store(ctx.Err())
			return "", ctx.Err()
		}
	}
	impatient, cancel := context.WithCancel(t.Context())
	res := make(chan error, 1)
	go func() {
		_, _, err := g.Do(impatient, "k", fn, nil)
		res <- err
	}()
	patient := make(chan string, 1)
	require.Eventually(t, func() bool { g.mu.Lock(); defer g.mu.Unlock(); return g.calls["k"] != nil }, time.Second, time.Millisecond)
	go func() {
		v, _, err := g.Do(t.Context(), "k", fn, nil)
		assert.NoError(t, err)
		patient <- v
	}()
	require.Eventually(t, func() bool { g.mu.Lock(); defer g.mu.Unlock(); return g.calls["k"].waiters == 2 }, time.Second, time.Millisecond)
	cancel()
	assert.ErrorIs(t, <-res, context.Canceled)
	close(gate)
	assert.Equal(t, "done", <-patient)
	assert.Nil(t, workErr.Load(), "the work was not cancelled while someone waited")
}

func TestFlightCancelledByLastCallerThenRestarts(t *testing.T) {
	var released atomic.Int32
	g := Group[int]{Release: func(int) { released.Add(1) }}
	ctx, cancel := context.WithCancel(t.Context())
	var sawCancel atomic.Bool
	go func() {
		time.Sleep(10 * time.Millisecond)
		cancel()
	}()
	_, _, err := g.Do(ctx, "k", func(ctx context.Context) (int, error) {
		<-ctx.Done()
		sawCancel.Store(true)
		return 0, ctx.Err()
	}, nil)
	require.ErrorIs(t, err, context.Canceled)
	assert.True(t, sawCancel.Load(), "do returns only once the cancelled work has wound down")
	assert.Equal(t, int32(0), released.Load(), "failed work has nothing to release")

	v, leader, err := g.Do(t.Context(), "k", func(context.Context) (int, error) { return 7, nil }, nil)
	require.NoError(t, err)
	assert.True(t, leader)
	assert.Equal(t, 7, v)
	assert.Equal(t, int32(1), released.Load())
}

func TestFlightAdoptErrorReachesItsCaller(t *testing.T) {
	g := Group[int]{}
	boom := errors.New("boom")
	_, _, err := g.Do(t.Context(), "k", func(context.Context) (int, error) { return 1, nil }, func(int) error { return boom })
	assert.ErrorIs(t, err, boom)
}
