package converter

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
)

// LayerState is where a layer is in its conversion.
type LayerState int32

const (
	// StateQueued: waiting for a worker.
	StateQueued LayerState = iota
	// StateReading: inspecting the source (is it already in the format?).
	StateReading
	// StateConverting: streaming the source through the converter.
	StateConverting
	// StateCommitted: the converted blob is in the content store.
	StateCommitted
	// StateCached: the variant was already in the store; nothing was converted.
	StateCached
	// StateKept: the layer is already in the target format and is kept as it is.
	StateKept
	// StateFailed: the conversion failed.
	StateFailed
	// StateFetching: the source layer is being fetched from its registry.
	StateFetching
	// StateRebuilding: the source layer is being rebuilt from its snapshot.
	StateRebuilding
	// StateShared: the variant was converted elsewhere and found through
	// the registry (a conversion published as a referrer of the source
	// manifest); nothing was converted here (its layers were fetched and
	// checked against the source unless its publisher is trusted).
	StateShared
	// StateVerifying: a published conversion's layer is being checked
	// against its source.
	StateVerifying
)

var stateNames = [...]string{"queued", "reading", "converting", "committed", "cached", "kept", "failed", "fetching", "rebuilding", "shared", "verifying"}

// String names the state as progress output shows it.
func (s LayerState) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "unknown"
}

// Done reports whether the state is final.
func (s LayerState) Done() bool { return s >= StateCommitted && s <= StateFailed || s == StateShared }

// Progress tracks every layer of a conversion. It is safe for concurrent use;
// converters update it and a display polls Snapshot.
type Progress struct {
	mu     sync.Mutex
	order  []*layerProgress
	layers map[digest.Digest]*layerProgress
}

// NewProgress returns an empty tracker.
func NewProgress() *Progress {
	return &Progress{layers: map[digest.Digest]*layerProgress{}}
}

// LayerStatus is one layer's progress at one moment.
type LayerStatus struct {
	Digest   digest.Digest // source layer
	Size     int64         // source size
	State    LayerState
	BytesIn  int64         // compressed source bytes read
	BytesOut int64         // converted bytes written
	Output   digest.Digest // converted (or cached) blob, once known
	OutSize  int64
	// NotLossless says what the output does not carry byte for byte ("" for a lossless layer).
	NotLossless string
	// Origin is where the layer came from when it was not in the content
	// store: OriginSnapshot or OriginRegistry ("" otherwise).
	Origin string
	// Verified: a shared layer fetched and checked against its source here.
	Verified bool
	Elapsed  time.Duration // since the layer left the queue
}

type layerProgress struct {
	digest   digest.Digest
	size     int64
	state    atomic.Int32
	in, out  atomic.Int64
	started  atomic.Int64 // unix nanoseconds
	finished atomic.Int64
	mu       sync.Mutex
	output   digest.Digest
	outSize  int64
	note     string
	origin   string
	verified bool
}

// layer returns the tracker of a source layer, creating it on first use. A nil
// Progress returns a tracker that is updated but never shown.
func (p *Progress) layer(d digest.Digest, size int64) *layerProgress {
	if p == nil {
		return &layerProgress{digest: d, size: size}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if l, ok := p.layers[d]; ok {
		return l
	}
	l := &layerProgress{digest: d, size: size}
	p.layers[d] = l
	p.order = append(p.order, l)
	return l
}

// Snapshot returns every layer's status in the order layers were first seen.
func (p *Progress) Snapshot() []LayerStatus {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	layers := append([]*layerProgress(nil), p.order...)
	p.mu.Unlock()
	out := make([]LayerStatus, 0, len(layers))
	for _, l := range layers {
		out = append(out, l.status())
	}
	return out
}

func (l *layerProgress) set(s LayerState) {
	now := time.Now().UnixNano()
	if s == StateQueued {
		l.started.Store(0) // back in the queue (after a fetch): time the conversion alone
	}
	if s > StateQueued {
		l.started.CompareAndSwap(0, now)
	}
	if s.Done() {
		l.finished.CompareAndSwap(0, now)
	}
	l.state.Store(int32(s))
}

func (l *layerProgress) setOutput(d digest.Digest, size int64, notLossless string) {
	l.mu.Lock()
	l.output, l.outSize, l.note = d, size, notLossless
	l.mu.Unlock()
}

func (l *layerProgress) setOrigin(origin string) {
	l.mu.Lock()
	l.origin = origin
	l.mu.Unlock()
}

func (l *layerProgress) setVerified(v bool) {
	l.mu.Lock()
	l.verified = v
	l.mu.Unlock()
}

func (l *layerProgress) status() LayerStatus {
	s := LayerStatus{
		Digest: l.digest, Size: l.size, State: LayerState(l.state.Load()),
		BytesIn: l.in.Load(), BytesOut: l.out.Load(),
	}
	l.mu.Lock()
	s.Output, s.OutSize, s.NotLossless, s.Origin, s.Verified = l.output, l.outSize, l.note, l.origin, l.verified
	l.mu.Unlock()
	if start := l.started.Load(); start != 0 {
		end := l.finished.Load()
		if end == 0 {
			end = time.Now().UnixNano()
		}
		s.Elapsed = time.Duration(end - start)
	}
	return s
}
