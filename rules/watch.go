package rules

import (
	"context"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
)

// Watch triggers jobs from containerd's image events until ctx is done: the
// plugin passes containerd's exchange, the sidecar its events API. It
// subscribes before it returns (on containerd's exchange the subscription
// is in place by then, so no image created after start-up is missed) and
// watches in the background, subscribing again if the events stop; images
// created in between are found by the reconcile that follows.
func (e *Engine) Watch(ctx context.Context, sub events.Subscriber) {
	subscribe := func() (<-chan *events.Envelope, <-chan error) {
		return sub.Subscribe(ctx, `topic~="^/images/(create|update|delete)$"`)
	}
	ch, errs := subscribe()
	go func() {
		for {
			e.listen(ctx, ch, errs)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second): // containerd went away: subscribe again
			}
			ch, errs = subscribe()
			select { // what happened meanwhile
			case e.reconcile <- struct{}{}:
			default:
			}
		}
	}()
}

func (e *Engine) listen(ctx context.Context, ch <-chan *events.Envelope, errs <-chan error) {
	for {
		select {
		case ev := <-ch:
			e.onEvent(ctx, ev)
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

// onEvent triggers the jobs an image event calls for, or prunes a deleted
// image's outputs.
func (e *Engine) onEvent(ctx context.Context, ev *events.Envelope) {
	v, err := typeurl.UnmarshalAny(ev.Event)
	if err != nil {
		return
	}
	nctx := namespaces.WithNamespace(ctx, ev.Namespace)
	switch x := v.(type) {
	case *eventstypes.ImageCreate:
		_ = e.Trigger(nctx, ev.Namespace, x.Name) // a dropped job is logged and counted
	case *eventstypes.ImageUpdate:
		_ = e.Trigger(nctx, ev.Namespace, x.Name)
	case *eventstypes.ImageDelete:
		e.Deleted(nctx, ev.Namespace, x.Name)
	}
}
