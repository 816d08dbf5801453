package service

import (
	"runtime"
	"runtime/debug"
	"sync"
	"time"
)

// DefaultIdleRelease is how long the service waits, once no conversion is
// running, before it gives memory back to the operating system.
const DefaultIdleRelease = 5 * time.Second

// idleReleaser gives memory back once the service has been idle a while.
// Conversions leave pooled gzip writers and stream buffers, and a grown Go
// heap; in containerd's process that memory would stay the daemon's. Two
// collections empty the sync.Pools (their victim caches too), and
// debug.FreeOSMemory returns what is free to the OS. Nothing runs while a
// conversion does.
type idleReleaser struct {
	after   time.Duration
	release func()

	mu      sync.Mutex
	running int
	timer   *time.Timer
}

func newIdleReleaser(after time.Duration) *idleReleaser {
	return &idleReleaser{after: after, release: func() {
		runtime.GC()
		debug.FreeOSMemory()
	}}
}

// begin notes a conversion starting.
func (r *idleReleaser) begin() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.running++
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
}

// end notes a conversion ending; the last one arms the release.
func (r *idleReleaser) end() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.running--
	if r.running == 0 && r.after > 0 {
		r.timer = time.AfterFunc(r.after, r.fire)
	}
}

func (r *idleReleaser) fire() {
	r.mu.Lock()
	idle := r.running == 0
	r.timer = nil
	r.mu.Unlock()
	if idle {
		r.release()
	}
}
