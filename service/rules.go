package service

import (
	"context"
	"fmt"
	"path"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/go-digest"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/labels"
)

// RuleFailedTopic is the topic of the event published when a rule
// conversion fails.
const RuleFailedTopic = "/lazyconv/rule-failed"

// RuleFailedEvent is the event published on RuleFailedTopic.
type RuleFailedEvent struct {
	Image, Target, Format, Error string
}

func init() { typeurl.Register(&RuleFailedEvent{}, "lazyconv.io", "RuleFailedEvent") }

// ruleJob is one image a rule converts.
type ruleJob struct {
	namespace, image string
	rule             Rule
}

func (j ruleJob) key() string { return j.namespace + "\x00" + j.image + "\x00" + j.rule.TagSuffix }

// ruleQueue holds the jobs waiting, bounded: when full, the oldest goes.
type ruleQueue struct {
	mu    sync.Mutex
	ready chan struct{} // signalled when a job is added
	jobs  []ruleJob
	limit int
}

func newRuleQueue(limit int) *ruleQueue {
	return &ruleQueue{ready: make(chan struct{}, 1), limit: limit}
}

// push adds a job (once: a job already waiting is not queued twice) and
// returns one it dropped to make room.
func (q *ruleQueue) push(j ruleJob) (dropped *ruleJob) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if slices.ContainsFunc(q.jobs, func(o ruleJob) bool { return o.key() == j.key() }) {
		return nil
	}
	if len(q.jobs) >= q.limit {
		d := q.jobs[0]
		dropped = &d
		q.jobs = q.jobs[1:]
	}
	q.jobs = append(q.jobs, j)
	serviceMetrics().ruleQueue.Set(float64(len(q.jobs)))
	select {
	case q.ready <- struct{}{}:
	default:
	}
	return dropped
}

// pop waits for a job until ctx is done.
func (q *ruleQueue) pop(ctx context.Context) (ruleJob, bool) {
	for {
		q.mu.Lock()
		if len(q.jobs) > 0 {
			j := q.jobs[0]
			q.jobs = q.jobs[1:]
			serviceMetrics().ruleQueue.Set(float64(len(q.jobs)))
			more := len(q.jobs) > 0
			q.mu.Unlock()
			if more {
				select {
				case q.ready <- struct{}{}:
				default:
				}
			}
			return j, true
		}
		q.mu.Unlock()
		select {
		case <-q.ready:
		case <-ctx.Done():
			return ruleJob{}, false
		}
	}
}

// ruleRunner converts what the rules match, as image events arrive.
type ruleRunner struct {
	s     *Service
	queue *ruleQueue
	pub   events.Publisher
	mu    sync.Mutex
	done  map[string]digest.Digest // job key -> the source target last converted (or tried)
}

// WatchImages converts the images the configured rules match as containerd
// creates or updates them, until ctx is done: the plugin passes containerd's
// event exchange, the sidecar its events API. It subscribes before it
// returns (on containerd's exchange the subscription is in place by then, so
// no image arriving after start-up is missed) and watches in the background,
// subscribing again if the events stop. Conversions run in the background
// under their own lease, share the service's workers and are de-duplicated
// with manual requests like any other.
func (s *Service) WatchImages(ctx context.Context, sub events.Subscriber, pub events.Publisher) {
	if len(s.cfg.Rules) == 0 {
		return
	}
	r := &ruleRunner{s: s, queue: newRuleQueue(s.cfg.RuleQueueLength), pub: pub, done: map[string]digest.Digest{}}
	for range max(1, runtime.GOMAXPROCS(0)) {
		go r.work(ctx)
	}
	subscribe := func() (<-chan *events.Envelope, <-chan error) {
		return sub.Subscribe(ctx, `topic~="^/images/(create|update)$"`)
	}
	ch, errs := subscribe()
	go func() {
		for {
			r.listen(ctx, ch, errs)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second): // containerd went away: subscribe again
			}
			ch, errs = subscribe()
		}
	}()
}

func (r *ruleRunner) listen(ctx context.Context, ch <-chan *events.Envelope, errs <-chan error) {
	for {
		select {
		case ev := <-ch:
			r.onEvent(ctx, ev)
		case err := <-errs:
			if err != nil && ctx.Err() == nil {
				log.G(ctx).WithError(err).Warn("lazyconv: image events interrupted; subscribing again")
			}
			return
		case <-ctx.Done():
			return
		}
	}
}

// onEvent queues the jobs an image event calls for.
func (r *ruleRunner) onEvent(ctx context.Context, ev *events.Envelope) {
	v, err := typeurl.UnmarshalAny(ev.Event)
	if err != nil {
		return
	}
	var name string
	switch e := v.(type) {
	case *eventstypes.ImageCreate:
		name = e.Name
	case *eventstypes.ImageUpdate:
		name = e.Name
	default:
		return
	}
	for _, job := range r.s.cfg.jobsFor(ev.Namespace, name) {
		if dropped := r.queue.push(job); dropped != nil {
			log.G(ctx).Warnf("lazyconv: rule queue full (%d): dropped the conversion of %s in %s", r.s.cfg.RuleQueueLength, dropped.image, dropped.namespace)
		}
	}
}

// jobsFor lists the conversions the rules ask of an image: none for a name
// that carries any rule's suffix (a conversion's output) or a digest.
func (c Config) jobsFor(namespace, name string) []ruleJob {
	if strings.Contains(name, "@") {
		return nil
	}
	for _, r := range c.Rules {
		if strings.HasSuffix(name, r.TagSuffix) {
			return nil
		}
	}
	var jobs []ruleJob
	for _, r := range c.Rules {
		if len(r.Namespaces) > 0 && !slices.Contains(r.Namespaces, namespace) {
			continue
		}
		if ok, _ := path.Match(r.Match, name); ok {
			jobs = append(jobs, ruleJob{namespace: namespace, image: name, rule: r})
		}
	}
	return jobs
}

func (r *ruleRunner) work(ctx context.Context) {
	for {
		job, ok := r.queue.pop(ctx)
		if !ok {
			return
		}
		r.convert(namespaces.WithNamespace(ctx, job.namespace), job)
	}
}

// convert runs one job, unless its image's target is the one it last
// converted (a label update, or the same image tagged again).
func (r *ruleRunner) convert(ctx context.Context, job ruleJob) {
	img, err := r.s.is.Get(ctx, job.image)
	if err != nil {
		return // deleted meanwhile
	}
	r.mu.Lock()
	if r.done[job.key()] == img.Target.Digest {
		r.mu.Unlock()
		return
	}
	r.done[job.key()] = img.Target.Digest
	r.mu.Unlock()

	target := job.image + job.rule.TagSuffix
	err = r.s.ConvertImage(ctx, &api.ConvertRequest{
		Source: job.image, Target: target, Format: job.rule.Format, Options: job.rule.Options, Oci: true,
	}, func(*api.ConvertEvent) error { return nil })
	if err != nil {
		log.G(ctx).WithError(err).WithFields(log.Fields{"image": job.image, "target": target, "format": job.rule.Format}).
			Warn("lazyconv: rule conversion failed")
		r.setFailure(ctx, img, truncate(fmt.Sprintf("%s to %s: %v", job.rule.Format, target, err)))
		if r.pub != nil {
			if perr := r.pub.Publish(ctx, RuleFailedTopic, &RuleFailedEvent{Image: job.image, Target: target, Format: job.rule.Format, Error: err.Error()}); perr != nil {
				log.G(ctx).WithError(perr).Warn("lazyconv: publishing the rule failure")
			}
		}
		return
	}
	if job.rule.Push {
		if _, err := r.s.PushImage(ctx, &api.PushRequest{Ref: target}); err != nil {
			log.G(ctx).WithError(err).WithField("target", target).Warn("lazyconv: rule push failed")
			r.setFailure(ctx, img, truncate(fmt.Sprintf("pushing %s: %v", target, err)))
			return
		}
	}
	if _, failed := img.Labels[labels.RuleFailed]; failed {
		r.setFailure(ctx, img, "")
	}
}

// truncate bounds a label's text.
func truncate(text string) string {
	if len(text) > 1024 {
		return text[:1024]
	}
	return text
}

// setFailure records (or, with "", removes) the failure label on the source image.
func (r *ruleRunner) setFailure(ctx context.Context, img images.Image, text string) {
	update := images.Image{Name: img.Name, Labels: map[string]string{labels.RuleFailed: text}}
	if _, err := r.s.is.Update(ctx, update, "labels."+labels.RuleFailed); err != nil {
		log.G(ctx).WithError(err).Warnf("lazyconv: labelling %s", img.Name)
	}
}
