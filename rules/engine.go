// Package rules is lazyconv's rules engine: what lets operators leave
// conversion running. Triggers come in (containerd's image events, a
// registry's push notifications, reconcile), each becomes a job for a key
// (rule, namespace, source image name) in a bounded queue, the service's
// worker runs it, and its outcome lands on the images' labels and in the
// metrics.
//
// It never loses work and never rolls back. One job per key runs at a time
// (state.go has the state machine); a job converts the digest the name
// resolved to when it started, and the worker stores and pushes the output
// only while the name still points there. A trigger that arrives while its
// key runs queues the key again behind it. Transient failures retry with
// backoff; permanent ones label the source. A trigger the full queue cannot
// take is counted and dropped, and reconcile (at start, every
// reconcile_interval, and as soon as the queue drains after a drop) queues
// every image that matches a rule and has no current output, which also
// covers what arrived while the daemon was down and what a restart
// interrupted. What is done is recorded on the images themselves (the
// output's source digest and rule), so memory holds only the keys queued or
// running.
package rules

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"

	"github.com/lazyconv/lazyconv/labels"
	"github.com/lazyconv/lazyconv/remote"
)

// Defaults of Config.
const (
	DefaultQueueLength       = 100
	DefaultRetries           = 5
	DefaultRetryBackoff      = 2 * time.Second
	DefaultReconcileInterval = 10 * time.Minute
	// maxBackoff caps the wait between retries.
	maxBackoff = 5 * time.Minute
)

// FailedTopic is the topic of the event published when a rule conversion
// fails for good (or runs out of retries).
const FailedTopic = "/lazyconv/rule-failed"

// FailedEvent is the event published on FailedTopic.
type FailedEvent struct {
	Image, Target, Format, Error string
}

func init() { typeurl.Register(&FailedEvent{}, "lazyconv.io", "RuleFailedEvent") }

// Config configures an Engine.
type Config struct {
	Rules []Rule
	// QueueLength bounds the keys waiting (queued, or waiting to retry).
	QueueLength int
	// Workers is the number of jobs run at once (the conversions' layers
	// share the service's workers anyway).
	Workers int
	// Retries is how many times a transient failure is tried again.
	Retries int
	// RetryBackoff is the wait before the first retry; it doubles with
	// each retry, up to five minutes.
	RetryBackoff time.Duration
	// ReconcileInterval is the time between reconciles.
	ReconcileInterval time.Duration
}

func (c Config) withDefaults() Config {
	if c.QueueLength <= 0 {
		c.QueueLength = DefaultQueueLength
	}
	if c.Workers <= 0 {
		c.Workers = 1
	}
	if c.Retries < 0 {
		c.Retries = 0
	}
	if c.RetryBackoff <= 0 {
		c.RetryBackoff = DefaultRetryBackoff
	}
	if c.ReconcileInterval <= 0 {
		c.ReconcileInterval = DefaultReconcileInterval
	}
	return c
}

// Job is one conversion a rule asks for.
type Job struct {
	Namespace string
	Rule      Rule
	// Source is the source image as resolved when the job started: the
	// worker converts Source.Target, not whatever the name means later.
	Source images.Image
	// Attempt counts the tries, from 1.
	Attempt int
}

// Outcome is what a job did.
type Outcome string

// Outcomes of a job, the values of lazyconv_rule_jobs_total{outcome}.
const (
	// Converted: the output was stored (and pushed, if the rule pushes).
	Converted Outcome = "converted"
	// Current: the output was already made from this source digest.
	Current Outcome = "current"
	// Stale: the source moved on while the job ran; its result was
	// dropped (the newer digest is queued behind it).
	Stale Outcome = "stale"
	// Skipped: nothing to convert (the source was deleted, or is an
	// output or a temporary image).
	Skipped Outcome = "skipped"
	// Failed: the job failed for good, or ran out of retries.
	Failed Outcome = "failed"
	// Retried: the job failed transiently and waits to be tried again.
	Retried Outcome = "retried"
)

// Worker runs jobs: the conversion service.
type Worker interface {
	// RunRule converts job.Source (its target digest) into the image
	// job.Rule.Output(job.Source.Name), labelled with Labels(job), storing
	// it only while the source name still points at that digest (Stale
	// otherwise), and pushes it when the rule pushes, never over an output
	// of a newer source.
	RunRule(ctx context.Context, job Job) (Outcome, error)
}

// entry is a key's state in memory, for keys that are not idle.
type entry struct {
	state   state
	attempt int
}

// Engine runs rule jobs.
type Engine struct {
	cfg        Config
	is         images.Store
	namespaces func(context.Context) ([]string, error)
	worker     Worker
	pub        events.Publisher
	metrics    *metricSet

	mu      sync.Mutex
	entries map[key]*entry
	queue   []key // the keys in state queued, oldest first
	waiting int   // keys in state waiting
	ready   chan struct{}
	// dropped: a trigger was dropped since the last reconcile began.
	dropped   bool
	warned    time.Time // the last warning about a full queue
	reconcile chan struct{}
	// idle is closed and replaced when no key is queued, running or waiting.
	idleCh chan struct{}
	// started: Start ran; reconciled is closed once its first reconcile is
	// done (WaitIdle waits for it).
	started    bool
	reconciled chan struct{}
}

// New returns an engine converting in is with worker. namespaces lists the
// namespaces reconcile looks in (rules restricted to namespaces look only in
// theirs); pub, if not nil, receives FailedTopic events.
func New(cfg Config, is images.Store, namespaces func(context.Context) ([]string, error), worker Worker, pub events.Publisher) (*Engine, error) {
	if err := Validate(cfg.Rules, nil); err != nil {
		return nil, err
	}
	return &Engine{cfg: cfg.withDefaults(), is: is, namespaces: namespaces, worker: worker, pub: pub, metrics: ruleMetrics(),
		entries: map[key]*entry{}, ready: make(chan struct{}, 1), reconcile: make(chan struct{}, 1), idleCh: make(chan struct{}),
		reconciled: make(chan struct{})}, nil
}

// Start runs the workers and reconcile (now, then every ReconcileInterval)
// until ctx is done.
func (e *Engine) Start(ctx context.Context) {
	e.mu.Lock()
	e.started = true
	e.mu.Unlock()
	for range e.cfg.Workers {
		go e.work(ctx)
	}
	go e.reconcileLoop(ctx)
}

// rule returns the rule of a key.
func (e *Engine) rule(suffix string) (Rule, bool) {
	for _, r := range e.cfg.Rules {
		if r.TagSuffix == suffix {
			return r, true
		}
	}
	return Rule{}, false
}

// matching lists the rules that convert the image name in namespace: none
// for a digest reference or a name that carries a rule's suffix (an output).
func (e *Engine) matching(namespace, name string) []Rule {
	if !taggedName(name) || referrersTag.MatchString(name) {
		return nil
	}
	for _, r := range e.cfg.Rules {
		if strings.HasSuffix(name, r.TagSuffix) {
			return nil
		}
	}
	var out []Rule
	for _, r := range e.cfg.Rules {
		if r.Applies(namespace, name) {
			out = append(out, r)
		}
	}
	return out
}

// Trigger queues the jobs the rules ask of the image name in namespace. It
// returns ErrUnavailable when the queue had no room for one of them (it is
// counted; reconcile finds it later).
func (e *Engine) Trigger(ctx context.Context, namespace, name string) error {
	return e.trigger(ctx, namespace, name, e.matching(namespace, name), false)
}

func (e *Engine) trigger(ctx context.Context, namespace, name string, rules []Rule, fromReconcile bool) error {
	var dropped int
	e.mu.Lock()
	for _, r := range rules {
		k := key{namespace: namespace, source: name, suffix: r.TagSuffix}
		en := e.entries[k]
		if en == nil {
			if len(e.queue)+e.waiting >= e.cfg.QueueLength {
				dropped++
				e.dropped = true
				continue
			}
			en = &entry{}
			e.entries[k] = en
		}
		e.apply(ctx, k, en, triggered)
	}
	warn := dropped > 0 && !fromReconcile && time.Since(e.warned) > 10*time.Second
	if warn {
		e.warned = time.Now()
	}
	e.mu.Unlock()
	if dropped == 0 {
		return nil
	}
	if fromReconcile {
		// not a lost trigger: reconcile finds it again once the queue drains
		return fmt.Errorf("the rule queue is full (%d): %w", e.cfg.QueueLength, errdefs.ErrUnavailable)
	}
	e.metrics.dropped.Inc(float64(dropped))
	if warn { // at most one line per 10 s in a storm; lazyconv_rule_jobs_dropped_total counts them all
		log.G(ctx).Warnf("lazyconv: rule queue full (%d): dropped the conversion of %s in %s (and maybe more); reconcile will queue them again",
			e.cfg.QueueLength, name, namespace)
	}
	return fmt.Errorf("the rule queue is full (%d): %w", e.cfg.QueueLength, errdefs.ErrUnavailable)
}

// apply moves a key through the state machine and keeps the queue, the
// counters and the entries in step; e.mu is held.
func (e *Engine) apply(ctx context.Context, k key, en *entry, in input) {
	next, ok := transition(en.state, in)
	if !ok {
		log.G(ctx).Errorf("lazyconv: rule job %v: %s while %s (ignored)", k, in, en.state)
		return
	}
	prev := en.state
	en.state = next
	if prev == waiting {
		e.waiting--
	}
	switch next {
	case queued:
		if prev != queued {
			e.queue = append(e.queue, k)
			select {
			case e.ready <- struct{}{}:
			default:
			}
		}
	case waiting:
		e.waiting++
	case idle:
		delete(e.entries, k)
	}
	e.metrics.queue.Set(float64(len(e.queue) + e.waiting))
	if len(e.entries) == 0 {
		close(e.idleCh)
		e.idleCh = make(chan struct{})
		if e.dropped {
			select {
			case e.reconcile <- struct{}{}:
			default:
			}
		}
	}
}

// pop takes the oldest queued key, waiting until ctx is done.
func (e *Engine) pop(ctx context.Context) (key, *entry, bool) {
	for {
		e.mu.Lock()
		if len(e.queue) > 0 {
			k := e.queue[0]
			e.queue = e.queue[1:]
			en := e.entries[k]
			e.apply(ctx, k, en, started)
			en.attempt++
			more := len(e.queue) > 0
			e.mu.Unlock()
			if more {
				select {
				case e.ready <- struct{}{}:
				default:
				}
			}
			return k, en, true
		}
		e.mu.Unlock()
		select {
		case <-e.ready:
		case <-ctx.Done():
			return key{}, nil, false
		}
	}
}

func (e *Engine) work(ctx context.Context) {
	for {
		k, en, ok := e.pop(ctx)
		if !ok {
			return
		}
		outcome, err := e.run(namespaces.WithNamespace(ctx, k.namespace), k, en)
		e.finish(ctx, k, en, outcome, err)
	}
}

// finish records a run's outcome and moves the key on.
func (e *Engine) finish(ctx context.Context, k key, en *entry, outcome Outcome, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if outcome == Retried {
		delay := min(e.cfg.RetryBackoff<<(en.attempt-1), maxBackoff)
		log.G(ctx).WithError(err).Warnf("lazyconv: rule conversion of %s in %s failed (try %d of %d); trying again in %s",
			k.source, k.namespace, en.attempt, e.cfg.Retries+1, delay)
		e.metrics.retries.Inc()
		e.apply(ctx, k, en, failedTransiently)
		if en.state == waiting {
			time.AfterFunc(delay, func() {
				e.mu.Lock()
				defer e.mu.Unlock()
				if ctx.Err() == nil {
					e.apply(ctx, k, en, backedOff)
				}
			})
		}
		return
	}
	if outcome != "" {
		e.metrics.jobs.WithValues(string(outcome)).Inc()
	}
	if en.state == rerun {
		en.attempt = 0
	}
	e.apply(ctx, k, en, finished)
}

// run runs one job for k: resolves the source name, skips what needs no
// work, and hands the rest to the worker. Its outcome is Retried when the
// failure is transient and retries are left.
func (e *Engine) run(ctx context.Context, k key, en *entry) (Outcome, error) {
	r, ok := e.rule(k.suffix)
	if !ok {
		return Skipped, nil
	}
	src, err := e.is.Get(ctx, k.source)
	if errdefs.IsNotFound(err) {
		return Skipped, nil
	}
	if err != nil {
		return e.failed(ctx, k, en, r, images.Image{Name: k.source}, err)
	}
	if src.Labels[labels.RuleOutput] != "" || src.Labels[labels.Temporary] != "" {
		return Skipped, nil
	}
	if failedBefore(r, src) {
		// This digest failed already: for good, or out of retries (reconcile
		// tries those again). Writing the failure label is itself an image
		// update: without this, a failure would trigger its own rerun.
		// Removing the label tries again at once.
		return Skipped, nil
	}
	if !taggedName(src.Name) {
		return Skipped, nil
	}
	if out, err := e.is.Get(ctx, r.Output(src.Name)); err == nil && IsCurrent(r, src, out) {
		e.cleared(ctx, r, src)
		return Current, nil
	}
	outcome, err := e.worker.RunRule(ctx, Job{Namespace: k.namespace, Rule: r, Source: src, Attempt: en.attempt})
	if err != nil {
		return e.failed(ctx, k, en, r, src, err)
	}
	if outcome == Converted || outcome == Current {
		e.cleared(ctx, r, src)
	}
	return outcome, nil
}

// failed decides what a job's error means: Retried while transient failures
// have retries left; otherwise the failure is labelled on the source and
// published.
func (e *Engine) failed(ctx context.Context, k key, en *entry, r Rule, src images.Image, err error) (Outcome, error) {
	if ctx.Err() != nil {
		return "", err // stopping: reconcile runs it at the next start
	}
	transient := remote.Transient(err)
	if transient && en.attempt <= e.cfg.Retries {
		return Retried, err
	}
	target := r.Output(k.source)
	log.G(ctx).WithError(err).WithFields(log.Fields{"image": k.source, "target": target, "format": r.Format, "tries": en.attempt}).
		Warn("lazyconv: rule conversion failed")
	if src.Target.Digest != "" {
		set := map[string]string{labels.RuleFailed: truncate(fmt.Sprintf("%s %v", failurePrefix(r, k.source), err))}
		if transient {
			set[labels.RuleGaveUpDigestPrefix+r.TagSuffix] = src.Target.Digest.String()
		} else {
			set[labels.RuleFailedDigestPrefix+r.TagSuffix] = src.Target.Digest.String()
		}
		e.label(ctx, src, set)
	}
	if e.pub != nil {
		if perr := e.pub.Publish(ctx, FailedTopic, &FailedEvent{Image: k.source, Target: target, Format: r.Format, Error: err.Error()}); perr != nil {
			log.G(ctx).WithError(perr).Warn("lazyconv: publishing the rule failure")
		}
	}
	return Failed, nil
}

// cleared removes a rule's failure labels from its source after a success.
func (e *Engine) cleared(ctx context.Context, r Rule, src images.Image) {
	set := map[string]string{}
	if strings.HasPrefix(src.Labels[labels.RuleFailed], failurePrefix(r, src.Name)) {
		set[labels.RuleFailed] = "" // this rule's failure; another rule's stays
	}
	for _, prefix := range []string{labels.RuleFailedDigestPrefix, labels.RuleGaveUpDigestPrefix} {
		if _, ok := src.Labels[prefix+r.TagSuffix]; ok {
			set[prefix+r.TagSuffix] = ""
		}
	}
	e.label(ctx, src, set)
}

// failurePrefix begins the failure label's text of r's conversion of source.
func failurePrefix(r Rule, source string) string {
	return fmt.Sprintf("%s to %s:", r.Format, r.Output(source))
}

// failedBefore says whether src's present digest failed r already, for good
// or out of retries.
func failedBefore(r Rule, src images.Image) bool {
	d := src.Target.Digest.String()
	return src.Labels[labels.RuleFailedDigestPrefix+r.TagSuffix] == d || src.Labels[labels.RuleGaveUpDigestPrefix+r.TagSuffix] == d
}

// referrersTag matches names whose tag is the referrers tag schema's
// (<algorithm>-<digest>: the index of a manifest's referrers that lazyconv
// itself pushes when it publishes a conversion to a registry without the
// referrers API): not an image to convert.
var referrersTag = regexp.MustCompile(`:(sha256|sha384|sha512)-[0-9a-f]{32,128}$`)

// taggedName says whether name is a tagged reference (host/repository:tag):
// a name without a tag would make an output in another repository
// (app + "-esgz"), and a digest reference has no tag to suffix.
func taggedName(name string) bool {
	if strings.Contains(name, "@") {
		return false
	}
	return strings.Contains(name[strings.LastIndex(name, "/")+1:], ":")
}

// label sets (or, with "", removes) labels on an image, writing only what
// changes (a write is an image update event).
func (e *Engine) label(ctx context.Context, img images.Image, set map[string]string) {
	for k, v := range set {
		if old, ok := img.Labels[k]; ok == (v != "") && old == v {
			delete(set, k)
		}
	}
	if len(set) == 0 {
		return
	}
	fields := make([]string, 0, len(set))
	for k := range set {
		fields = append(fields, "labels."+k)
	}
	if _, err := e.is.Update(ctx, images.Image{Name: img.Name, Labels: set}, fields...); err != nil && !errdefs.IsNotFound(err) {
		log.G(ctx).WithError(err).Warnf("lazyconv: labelling %s", img.Name)
	}
}

// WaitIdle waits until the first reconcile of a started engine is done and
// no key is queued, running or waiting (or ctx is done): for tests and
// benchmarks.
func (e *Engine) WaitIdle(ctx context.Context) error {
	e.mu.Lock()
	started := e.started
	e.mu.Unlock()
	if started {
		select {
		case <-e.reconciled:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for {
		e.mu.Lock()
		n, ch := len(e.entries), e.idleCh
		e.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Labels are the labels of a rule's output of src (with
// labels.ImageConvertedFrom, which the converter sets).
func Labels(r Rule, src images.Image) map[string]string {
	return map[string]string{
		labels.RuleOutput:          r.TagSuffix,
		labels.ConvertedFromDigest: src.Target.Digest.String(),
		labels.RuleSpec:            r.Spec(),
	}
}

// IsCurrent says whether out is the rule's output of src as it is now: made
// by this rule (with its present options) from src's present digest, and
// pushed if the rule pushes.
func IsCurrent(r Rule, src, out images.Image) bool {
	l := out.Labels
	return l[labels.RuleOutput] == r.TagSuffix && l[labels.ImageConvertedFrom] == src.Name &&
		l[labels.ConvertedFromDigest] == src.Target.Digest.String() && l[labels.RuleSpec] == r.Spec() &&
		(!r.Push || l[labels.RulePushed] == out.Target.Digest.String())
}

// truncate bounds a label's text, keeping it valid UTF-8.
func truncate(text string) string {
	if len(text) > 1024 {
		text = text[:1024]
	}
	return strings.ToValidUTF8(text, "")
}
