// Package flight runs one piece of work per key at a time, for callers that may
// give up: BuildKit's util/flightcontrol idea with what lazyconv needs for
// leases (per-caller adoption of the result, release after the last adopter).
package flight

import (
	"context"
	"sync"
)

// Group runs one piece of work per key at a time: callers that ask for a
// key already in flight wait for that work instead of starting their own. It is
// BuildKit's flightcontrol idea with two additions lazyconv needs for leases:
//
//   - the work runs on a context that is cancelled only when every caller
//     waiting for it has gone (one impatient caller does not fail the others);
//   - every caller that receives the result runs adopt on it (to add the result
//     to its own lease) and release runs once after the last of them, so the
//     work's own lease can be dropped only when nobody still depends on it.
//
// The zero Group is ready to use.
type Group[T any] struct {
	// Release, if set, runs once per successful call after every caller that
	// received its result has adopted it.
	Release func(T)

	mu    sync.Mutex
	calls map[string]*call[T]
}

type call[T any] struct {
	cancel   context.CancelFunc
	done     chan struct{} // the work returned
	finished chan struct{} // ... and run has released what it had to
	val      T
	err      error
	waiters  int  // callers inside do for this call
	settled  bool // done and released, or about to be
}

// Do returns the result of fn for key, running fn only if no call for key is in
// flight. adopt, if not nil, runs on a successful result before do returns it.
// The returned bool is true for the caller whose do started the work.
func (g *Group[T]) Do(ctx context.Context, key string, fn func(context.Context) (T, error), adopt func(T) error) (T, bool, error) {
	g.mu.Lock()
	if g.calls == nil {
		g.calls = map[string]*call[T]{}
	}
	f, joined := g.calls[key]
	if !joined {
		workCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		f = &call[T]{cancel: cancel, done: make(chan struct{}), finished: make(chan struct{})}
		g.calls[key] = f
		go g.run(workCtx, key, f, fn)
	}
	f.waiters++
	g.mu.Unlock()

	select {
	case <-f.done:
	case <-ctx.Done():
		g.leave(key, f)
		var zero T
		return zero, false, context.Cause(ctx)
	}
	if f.err != nil {
		g.leave(key, f)
		var zero T
		return zero, !joined, f.err
	}
	var err error
	if adopt != nil {
		err = adopt(f.val)
	}
	g.leave(key, f)
	if err != nil {
		var zero T
		return zero, !joined, err
	}
	return f.val, !joined, nil
}

func (g *Group[T]) run(ctx context.Context, key string, f *call[T], fn func(context.Context) (T, error)) {
	val, err := fn(ctx)
	g.mu.Lock()
	f.val, f.err = val, err
	if g.calls[key] == f {
		delete(g.calls, key)
	}
	close(f.done)
	f.cancel()
	last := f.waiters == 0 && !f.settled
	if last {
		f.settled = true
	}
	g.mu.Unlock()
	if last {
		g.releaseOne(f)
	}
	close(f.finished)
}

// leave counts a caller out; the last one out cancels unfinished work and
// waits for it to wind down (so that what it wrote is cleaned up before the
// caller returns), or releases finished work.
func (g *Group[T]) leave(key string, f *call[T]) {
	g.mu.Lock()
	f.waiters--
	var cancel, release bool
	if f.waiters == 0 {
		select {
		case <-f.done:
			if !f.settled {
				f.settled, release = true, true
			}
		default:
			// Nobody waits any more: cancel, and let the next caller start afresh.
			cancel = true
			if g.calls[key] == f {
				delete(g.calls, key)
			}
		}
	}
	g.mu.Unlock()
	if cancel {
		f.cancel()
		<-f.finished
	}
	if release {
		g.releaseOne(f)
	}
}

func (g *Group[T]) releaseOne(f *call[T]) {
	if g.Release != nil && f.err == nil {
		g.Release(f.val)
	}
}
