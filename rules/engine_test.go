package rules_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/events/exchange"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/metadata"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/lazyconv/lazyconv/labels"
	"github.com/lazyconv/lazyconv/localstore"
	"github.com/lazyconv/lazyconv/notifications"
	"github.com/lazyconv/lazyconv/rules"
)

// worker is a stand-in for the service: it records each job and stores the
// output as the service does (labelled with rules.Labels), unless fail says
// otherwise; block, if set, holds each run until it is closed.
type worker struct {
	is      images.Store
	mu      sync.Mutex
	runs    []rules.Job
	running atomic.Int32
	most    atomic.Int32
	block   chan struct{}
	fail    func(rules.Job) error
}

func (w *worker) RunRule(ctx context.Context, job rules.Job) (rules.Outcome, error) {
	n := w.running.Add(1)
	defer w.running.Add(-1)
	for m := w.most.Load(); n > m && !w.most.CompareAndSwap(m, n); m = w.most.Load() {
	}
	w.mu.Lock()
	w.runs = append(w.runs, job)
	block := w.block
	w.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	if w.fail != nil {
		if err := w.fail(job); err != nil {
			return "", err
		}
	}
	now, err := w.is.Get(ctx, job.Source.Name)
	if err != nil || now.Target.Digest != job.Source.Target.Digest {
		return rules.Stale, nil
	}
	out := images.Image{Name: job.Rule.Output(job.Source.Name), Target: job.Source.Target, Labels: rules.Labels(job.Rule, job.Source)}
	out.Labels[labels.ImageConvertedFrom] = job.Source.Name
	if job.Rule.Push {
		out.Labels[labels.RulePushed] = out.Target.Digest.String()
	}
	if _, err := w.is.Update(ctx, out, "target", "labels"); errdefs.IsNotFound(err) {
		_, err = w.is.Create(ctx, out)
		return rules.Converted, err
	} else if err != nil {
		return "", err
	}
	return rules.Converted, nil
}

func (w *worker) jobs() []rules.Job {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]rules.Job(nil), w.runs...)
}

type fixture struct {
	ctx context.Context
	is  images.Store
	w   *worker
	e   *rules.Engine
}

var rule = rules.Rule{Match: "example.com/*", Format: "estargz", TagSuffix: "-esgz"}

func newFixture(t *testing.T, cfg rules.Config, w *worker) *fixture {
	t.Helper()
	ctx, cancel := context.WithCancel(namespaces.WithNamespace(context.Background(), "test"))
	t.Cleanup(cancel)
	st, err := localstore.Open(ctx, t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	if cfg.Rules == nil {
		cfg.Rules = []rules.Rule{rule}
	}
	w.is = st.ImageStore()
	e, err := rules.New(cfg, st.ImageStore(), func(context.Context) ([]string, error) { return []string{"test"}, nil }, w, nil)
	require.NoError(t, err)
	return &fixture{ctx: ctx, is: st.ImageStore(), w: w, e: e}
}

// put points name at a made-up target (the engine reads only names,
// digests and labels; the worker converts nothing).
func (f *fixture) put(t *testing.T, name, version string) images.Image {
	t.Helper()
	img := images.Image{Name: name, Target: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString(version), Size: 1}}
	stored, err := f.is.Update(f.ctx, img, "target")
	if errdefs.IsNotFound(err) {
		stored, err = f.is.Create(f.ctx, img)
	}
	require.NoError(t, err)
	return stored
}

func (f *fixture) idle(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(f.ctx, 20*time.Second)
	defer cancel()
	require.NoError(t, f.e.WaitIdle(ctx))
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		require.True(t, time.Now().Before(deadline), "timed out: %s", what)
		time.Sleep(5 * time.Millisecond)
	}
}

// A key runs one job at a time. Triggers while it runs (the tag moved) queue
// it once more, and that run converts what the name points at then: the
// output ends as the conversion of the newest digest, never of an older one.
func TestOneJobPerKeyAndTheNewestDigestWins(t *testing.T) {
	w := &worker{block: make(chan struct{})}
	f := newFixture(t, rules.Config{Workers: 4}, w)
	f.e.Start(f.ctx)
	f.put(t, "example.com/app:v1", "T1")
	require.NoError(t, f.e.Trigger(f.ctx, "test", "example.com/app:v1"))
	waitFor(t, "the first job runs", func() bool { return len(w.jobs()) == 1 })
	t2 := f.put(t, "example.com/app:v1", "T2")
	for range 5 {
		require.NoError(t, f.e.Trigger(f.ctx, "test", "example.com/app:v1"))
	}
	time.Sleep(50 * time.Millisecond)
	assert.Len(t, w.jobs(), 1, "no second job for the key while one runs")
	close(w.block)
	f.idle(t)
	jobs := w.jobs()
	require.Len(t, jobs, 2, "the triggers while it ran make one more run")
	assert.Equal(t, digest.FromString("T1"), jobs[0].Source.Target.Digest)
	assert.Equal(t, digest.FromString("T2"), jobs[1].Source.Target.Digest, "the rerun converts the digest the name points at now")
	assert.EqualValues(t, 1, w.most.Load(), "never two jobs of one key at once")
	out, err := f.is.Get(f.ctx, "example.com/app:v1-esgz")
	require.NoError(t, err)
	assert.True(t, rules.IsCurrent(rule, t2, out), "the output is the newest digest's")
}

// Transient failures are retried with backoff; once the retries are spent,
// the failure is labelled (but not as final: reconcile tries it again).
// A permanent failure is labelled at once, with the digest, which reconcile
// leaves alone until the name points elsewhere.
func TestFailures(t *testing.T) {
	t.Run("transient", func(t *testing.T) {
		w := &worker{fail: func(rules.Job) error { return fmt.Errorf("registry: %w", errdefs.ErrUnavailable) }}
		f := newFixture(t, rules.Config{Retries: 2, RetryBackoff: time.Millisecond}, w)
		f.e.Start(f.ctx)
		f.put(t, "example.com/app:v1", "T1")
		require.NoError(t, f.e.Trigger(f.ctx, "test", "example.com/app:v1"))
		f.idle(t)
		jobs := w.jobs()
		require.Len(t, jobs, 3, "tried once and retried twice")
		assert.Equal(t, []int{1, 2, 3}, []int{jobs[0].Attempt, jobs[1].Attempt, jobs[2].Attempt})
		src, err := f.is.Get(f.ctx, "example.com/app:v1")
		require.NoError(t, err)
		assert.Contains(t, src.Labels[labels.RuleFailed], "unavailable")
		assert.Empty(t, src.Labels[labels.RuleFailedDigestPrefix+"-esgz"], "not final")
		w.fail = nil
		require.NoError(t, f.e.Reconcile(f.ctx))
		f.idle(t)
		src, err = f.is.Get(f.ctx, "example.com/app:v1")
		require.NoError(t, err)
		assert.Empty(t, src.Labels[labels.RuleFailed], "a success clears the label")
		_, err = f.is.Get(f.ctx, "example.com/app:v1-esgz")
		assert.NoError(t, err, "reconcile tried it again")
	})
	t.Run("permanent", func(t *testing.T) {
		w := &worker{fail: func(rules.Job) error { return fmt.Errorf("climbs out: %w", errdefs.ErrInvalidArgument) }}
		f := newFixture(t, rules.Config{Retries: 2, RetryBackoff: time.Millisecond}, w)
		f.e.Start(f.ctx)
		f.put(t, "example.com/bad:v1", "B1")
		require.NoError(t, f.e.Trigger(f.ctx, "test", "example.com/bad:v1"))
		f.idle(t)
		require.Len(t, w.jobs(), 1, "no retry")
		src, err := f.is.Get(f.ctx, "example.com/bad:v1")
		require.NoError(t, err)
		assert.Contains(t, src.Labels[labels.RuleFailed], "climbs out")
		assert.Equal(t, digest.FromString("B1").String(), src.Labels[labels.RuleFailedDigestPrefix+"-esgz"])
		require.NoError(t, f.e.Reconcile(f.ctx))
		f.idle(t)
		assert.Len(t, w.jobs(), 1, "reconcile leaves a digest that failed for good")
		require.NoError(t, f.e.Trigger(f.ctx, "test", "example.com/bad:v1"))
		f.idle(t)
		assert.Len(t, w.jobs(), 1, "an event for the same digest too (the failure label's own update is one)")
		_, err = f.is.Update(f.ctx, images.Image{Name: "example.com/bad:v1"}, "labels."+labels.RuleFailedDigestPrefix+"-esgz")
		require.NoError(t, err)
		require.NoError(t, f.e.Trigger(f.ctx, "test", "example.com/bad:v1"))
		f.idle(t)
		assert.Len(t, w.jobs(), 2, "removing the label tries again")
		f.put(t, "example.com/bad:v1", "B2")
		require.NoError(t, f.e.Trigger(f.ctx, "test", "example.com/bad:v1"))
		f.idle(t)
		assert.Len(t, w.jobs(), 3, "so does a new digest")
	})
}

// eventedStore is containerd's metadata DB publishing image events on an
// exchange, as the daemon's does: every label the engine writes is an
// /images/update event.
func eventedStore(t *testing.T) (images.Store, *exchange.Exchange) {
	t.Helper()
	dir := t.TempDir()
	cs, err := local.NewStore(filepath.Join(dir, "content"))
	require.NoError(t, err)
	bdb, err := bolt.Open(filepath.Join(dir, "meta.db"), 0o644, nil)
	require.NoError(t, err)
	t.Cleanup(func() { bdb.Close() })
	ex := exchange.NewExchange()
	db := metadata.NewDB(bdb, cs, nil, metadata.WithEventsPublisher(ex))
	require.NoError(t, db.Init(context.Background()))
	return metadata.NewImageStore(db), ex
}

// A failure labels its source, which is an image update: it must not
// trigger the key again (a permanent failure would run for ever, a
// transient one retry without end).
func TestAFailureDoesNotTriggerItself(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want int
	}{
		{"permanent", fmt.Errorf("climbs out: %w", errdefs.ErrInvalidArgument), 1},
		{"transient", fmt.Errorf("registry: %w", errdefs.ErrUnavailable), 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(namespaces.WithNamespace(context.Background(), "test"))
			defer cancel()
			is, ex := eventedStore(t)
			w := &worker{is: is, fail: func(rules.Job) error { return tc.err }}
			e, err := rules.New(rules.Config{Rules: []rules.Rule{rule}, Retries: 1, RetryBackoff: time.Millisecond, ReconcileInterval: time.Hour},
				is, func(context.Context) ([]string, error) { return []string{"test"}, nil }, w, nil)
			require.NoError(t, err)
			e.Watch(ctx, ex)
			e.Start(ctx)
			f := &fixture{ctx: ctx, is: is, w: w, e: e}
			f.put(t, "example.com/bad:v1", "B1") // its create event triggers the rule
			time.Sleep(time.Second)
			f.idle(t)
			assert.Len(t, w.jobs(), tc.want)
			src, err := is.Get(ctx, "example.com/bad:v1")
			require.NoError(t, err)
			assert.NotEmpty(t, src.Labels[labels.RuleFailed])
		})
	}
}

// Two rules whose suffixes end one with the other could give two images one
// output (app:v1-opt by -esgz, app:v1 by -opt-esgz): refused.
func TestOverlappingSuffixesAreRefused(t *testing.T) {
	a := rules.Rule{Match: "example.com/*", Format: "estargz", TagSuffix: "-esgz"}
	b := rules.Rule{Match: "example.com/*", Format: "estargz", TagSuffix: "-opt-esgz"}
	c := rules.Rule{Match: "example.com/*", Format: "zstdchunked", TagSuffix: "-zc"}
	assert.True(t, errdefs.IsInvalidArgument(rules.Validate([]rules.Rule{a, b}, nil)))
	assert.True(t, errdefs.IsInvalidArgument(rules.Validate([]rules.Rule{b, a}, nil)))
	assert.NoError(t, rules.Validate([]rules.Rule{a, c}, nil))
}

// Only tagged names are sources: an untagged one would make its output in
// another repository (app + "-esgz"), a digest reference has no tag, and a
// referrers tag (sha256-<hex>) names the index of a manifest's referrers.
func TestOnlyTaggedNamesAreSources(t *testing.T) {
	w := &worker{}
	f := newFixture(t, rules.Config{ReconcileInterval: time.Hour}, w)
	f.e.Start(f.ctx)
	referrers := "example.com/app:sha256-" + digest.FromString("x").Encoded() // the referrers tag schema's index
	for _, name := range []string{"example.com/app", "example.com/app@" + digest.FromString("x").String(), referrers, "example.com/app:v1"} {
		f.put(t, name, name)
		require.NoError(t, f.e.Trigger(f.ctx, "test", name))
	}
	f.idle(t)
	require.Len(t, w.jobs(), 1)
	assert.Equal(t, "example.com/app:v1", w.jobs()[0].Source.Name)
}

// A full queue drops triggers (counted), and the reconcile that follows as
// soon as the queue drains converts every one of them: none is lost, and
// the engine holds no more keys than the queue and its workers.
func TestAFullQueueLosesNothing(t *testing.T) {
	w := &worker{block: make(chan struct{})}
	f := newFixture(t, rules.Config{QueueLength: 3, Workers: 1, ReconcileInterval: time.Hour}, w)
	const n = 40
	for i := range n {
		f.put(t, fmt.Sprintf("example.com/app%d:v1", i), fmt.Sprint(i))
	}
	f.e.Start(f.ctx) // reconciles at once: 3 queued, the rest dropped
	var dropped int
	for i := range n {
		if err := f.e.Trigger(f.ctx, "test", fmt.Sprintf("example.com/app%d:v1", i)); errdefs.IsUnavailable(err) {
			dropped++
		}
	}
	assert.Greater(t, dropped, n/2, "the queue is bounded")
	close(w.block)
	waitFor(t, "every image is converted", func() bool {
		for i := range n {
			if _, err := f.is.Get(f.ctx, fmt.Sprintf("example.com/app%d:v1-esgz", i)); err != nil {
				return false
			}
		}
		return true
	})
	f.idle(t)
	seen := map[string]int{}
	for _, j := range w.jobs() {
		seen[j.Source.Name]++
	}
	assert.Len(t, seen, n)
	for name, c := range seen {
		assert.Equal(t, 1, c, "%s converted exactly once", name)
	}
}

// Reconcile queues what has no current output (none, an older digest's,
// another rule spec's, not pushed when the rule pushes) and nothing else;
// outputs, temporary images and digests are never sources; prune_outputs
// deletes outputs whose source is gone, and only the rule's own.
func TestReconcile(t *testing.T) {
	pruning := rules.Rule{Match: "example.com/*", Format: "estargz", TagSuffix: "-esgz", PruneOutputs: true}
	w := &worker{}
	f := newFixture(t, rules.Config{Rules: []rules.Rule{pruning}, ReconcileInterval: time.Hour}, w)
	output := func(src images.Image, r rules.Rule, edit func(map[string]string)) {
		l := rules.Labels(r, src)
		l[labels.ImageConvertedFrom] = src.Name
		if edit != nil {
			edit(l)
		}
		_, err := f.is.Create(f.ctx, images.Image{Name: r.Output(src.Name), Target: src.Target, Labels: l})
		require.NoError(t, err)
	}
	current := f.put(t, "example.com/current:v1", "c")
	output(current, pruning, nil)
	old := f.put(t, "example.com/old:v1", "o1")
	output(old, pruning, nil)
	f.put(t, "example.com/old:v1", "o2")
	spec := f.put(t, "example.com/spec:v1", "s")
	output(spec, rules.Rule{Match: "example.com/*", Format: "zstdchunked", TagSuffix: "-esgz"}, nil)
	f.put(t, "example.com/none:v1", "n")
	f.put(t, "other.com/none:v1", "x")
	tmp := f.put(t, "example.com/tmp:v1", "t")
	_, err := f.is.Update(f.ctx, images.Image{Name: tmp.Name, Labels: map[string]string{labels.Temporary: "push"}}, "labels."+labels.Temporary)
	require.NoError(t, err)
	gone := images.Image{Name: "example.com/gone:v1", Target: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("g"), Size: 1}}
	output(gone, pruning, nil)
	theirs := images.Image{Name: "example.com/theirs:v1", Target: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("h"), Size: 1}}
	output(theirs, pruning, func(l map[string]string) { l[labels.ImageConvertedFrom] = "example.com/someone-else:v1" })

	f.e.Start(f.ctx)
	require.NoError(t, f.e.Reconcile(f.ctx))
	f.idle(t)
	var got []string
	for _, j := range w.jobs() {
		got = append(got, j.Source.Name)
	}
	assert.ElementsMatch(t, []string{"example.com/old:v1", "example.com/spec:v1", "example.com/none:v1"}, got)
	_, err = f.is.Get(f.ctx, "example.com/gone:v1-esgz")
	assert.True(t, errdefs.IsNotFound(err), "the output of a deleted source is pruned")
	_, err = f.is.Get(f.ctx, "example.com/theirs:v1-esgz")
	assert.NoError(t, err, "an image whose labels name another source is not this rule's output of a gone source")
	for _, name := range []string{"example.com/current:v1-esgz-esgz", "example.com/tmp:v1-esgz"} {
		_, err := f.is.Get(f.ctx, name)
		assert.True(t, errdefs.IsNotFound(err), "%s is never made", name)
	}

	// Deleting a source prunes its output at once.
	require.NoError(t, f.is.Delete(f.ctx, "example.com/none:v1"))
	f.e.Deleted(f.ctx, "test", "example.com/none:v1")
	_, err = f.is.Get(f.ctx, "example.com/none:v1-esgz")
	assert.True(t, errdefs.IsNotFound(err))
}

// A pushing rule's output that was stored but not pushed (a restart between
// the two) is not current: reconcile runs it again.
func TestAnUnpushedOutputIsNotCurrent(t *testing.T) {
	pushing := rules.Rule{Match: "example.com/*", Format: "estargz", TagSuffix: "-esgz", Push: true}
	src := images.Image{Name: "example.com/app:v1", Target: ocispec.Descriptor{Digest: digest.FromString("a")}}
	out := images.Image{Name: "example.com/app:v1-esgz", Target: ocispec.Descriptor{Digest: digest.FromString("b")}, Labels: rules.Labels(pushing, src)}
	out.Labels[labels.ImageConvertedFrom] = src.Name
	assert.False(t, rules.IsCurrent(pushing, src, out))
	out.Labels[labels.RulePushed] = out.Target.Digest.String()
	assert.True(t, rules.IsCurrent(pushing, src, out))
	out.Labels[labels.ConvertedFromDigest] = digest.FromString("older").String()
	assert.False(t, rules.IsCurrent(pushing, src, out))
}

// puller is a worker that also pulls what notifications name, answering
// with err (nil: it stores the image).
type puller struct {
	*worker
	err   error
	pulls atomic.Int32
}

func (p *puller) PullSource(ctx context.Context, namespace, ref string, dgst digest.Digest) (images.Image, error) {
	p.pulls.Add(1)
	if p.err != nil {
		return images.Image{}, p.err
	}
	img := images.Image{Name: ref, Target: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: dgst, Size: 1},
		Labels: map[string]string{labels.Notified: dgst.String()}}
	if _, err := p.is.Update(ctx, img, "target"); errdefs.IsNotFound(err) {
		return p.is.Create(ctx, img)
	}
	return img, nil
}

// A notified push is pulled and queued for the pushing rules only; a
// redelivery of a digest that is here already pulls nothing; outputs and
// pushes by digest are ignored; a pull that fails for good is accepted
// (the registry would redeliver it for ever) and one that fails
// transiently asks the registry to deliver again.
func TestNotified(t *testing.T) {
	pushing := rules.Rule{Match: "registry.example.com/*", Format: "estargz", TagSuffix: "-esgz", Push: true}
	local := rules.Rule{Match: "registry.example.com/*", Format: "zstdchunked", TagSuffix: "-zc"}
	push := func(tag, version string) notifications.Push {
		return notifications.Push{Host: "registry.example.com", Repository: "app", Tag: tag, Digest: digest.FromString(version)}
	}
	t.Run("converted once", func(t *testing.T) {
		p := &puller{worker: &worker{}}
		f := newFixture(t, rules.Config{Rules: []rules.Rule{pushing, local}, ReconcileInterval: time.Hour}, p.worker)
		f.e = mustEngine(t, f, rules.Config{Rules: []rules.Rule{pushing, local}, ReconcileInterval: time.Hour}, p)
		f.e.Start(f.ctx)
		f.idle(t) // the start-up reconcile is done: it would queue the local rule too for what the notification pulls
		require.NoError(t, f.e.Notified(f.ctx, "test", []notifications.Push{push("v1", "a"), push("v1-esgz", "b"), {Host: "registry.example.com", Repository: "app", Digest: digest.FromString("c")}}))
		f.idle(t)
		require.NoError(t, f.e.Notified(f.ctx, "test", []notifications.Push{push("v1", "a")}))
		f.idle(t)
		assert.EqualValues(t, 1, p.pulls.Load(), "the redelivery pulls nothing; the output's push and a push by digest are ignored")
		require.Len(t, p.jobs(), 1, "one conversion, by the pushing rule")
		assert.Equal(t, "-esgz", p.jobs()[0].Rule.TagSuffix)
	})
	for _, tc := range []struct {
		name        string
		err         error
		unavailable bool
	}{
		{"gone", fmt.Errorf("resolving: %w", errdefs.ErrNotFound), false},
		{"moved on", fmt.Errorf("the registry's tag is another digest: %w", errdefs.ErrFailedPrecondition), false},
		{"held by another image", fmt.Errorf("not moving it: %w", errdefs.ErrAlreadyExists), false},
		{"refused", errors.New("unexpected status 401 Unauthorized"), false},
		{"registry down", fmt.Errorf("resolving: %w", errdefs.ErrUnavailable), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &puller{worker: &worker{}, err: tc.err}
			f := newFixture(t, rules.Config{Rules: []rules.Rule{pushing}}, p.worker)
			f.e = mustEngine(t, f, rules.Config{Rules: []rules.Rule{pushing}}, p)
			err := f.e.Notified(f.ctx, "test", []notifications.Push{push("v1", "a")})
			assert.Equal(t, tc.unavailable, errdefs.IsUnavailable(err), "%v", err)
			if !tc.unavailable {
				assert.NoError(t, err)
			}
		})
	}
}

func mustEngine(t *testing.T, f *fixture, cfg rules.Config, w rules.Worker) *rules.Engine {
	t.Helper()
	e, err := rules.New(cfg, f.is, func(context.Context) ([]string, error) { return []string{"test"}, nil }, w, nil)
	require.NoError(t, err)
	return e
}
