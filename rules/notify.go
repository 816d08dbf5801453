package rules

import (
	"context"
	"fmt"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/lazyconv/lazyconv/notifications"
	"github.com/lazyconv/lazyconv/remote"
)

// Puller lazily pulls what a registry notified (the service): the image's
// index, manifests and configs as its registry has them now, stored under
// ref in namespace; layers come when a conversion needs them.
type Puller interface {
	PullSource(ctx context.Context, namespace, ref string, dgst digest.Digest) (images.Image, error)
}

// Notified turns a registry's push notifications into rule jobs in
// namespace: each pushed tag that a pushing rule matches (outputs and pushes
// by digest are ignored) is pulled lazily, which records it durably before
// the registry is answered (a restart's reconcile finds it), and queued. A
// redelivered push whose digest is here already is only queued again, which
// is a no-op once its output is current. It returns ErrUnavailable when the
// queue is full or the registry failed transiently, so that the registry
// delivers again later; a push that cannot be pulled for good is logged,
// counted and answered as accepted (distribution would otherwise redeliver
// it forever, ahead of every later push).
func (e *Engine) Notified(ctx context.Context, namespace string, pushes []notifications.Push) error {
	puller, ok := e.worker.(Puller)
	if !ok {
		return fmt.Errorf("this worker cannot pull: %w", errdefs.ErrNotImplemented)
	}
	ctx = namespaces.WithNamespace(ctx, namespace)
	var full error
	for _, p := range pushes {
		if p.Tag == "" {
			continue
		}
		ref := p.Ref()
		var pushing []Rule
		for _, r := range e.matching(namespace, ref) {
			if r.Push {
				pushing = append(pushing, r)
			}
		}
		if len(pushing) == 0 {
			continue
		}
		if img, err := e.is.Get(ctx, ref); err != nil || p.Digest == "" || img.Target.Digest != p.Digest {
			if _, err := puller.PullSource(ctx, namespace, ref, p.Digest); err != nil {
				if remote.Transient(err) {
					// the registry is busy or away: it delivers again
					return fmt.Errorf("pulling %s: %v: %w", ref, err, errdefs.ErrUnavailable)
				}
				// Gone, moved on (a later push is notified), refused,
				// a name this namespace holds already: nothing to convert,
				// and asking again would give the same answer.
				log.G(ctx).WithError(err).Warnf("lazyconv: not converting %s, pushed to its registry", ref)
				e.metrics.notifiedIgnored.Inc()
				continue
			}
		}
		e.metrics.notified.Inc()
		if err := e.trigger(ctx, namespace, ref, pushing, false); err != nil {
			full = err
		}
	}
	return full
}
