package rules

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/lazyconv/lazyconv/labels"
)

// reconcileLoop reconciles now, every ReconcileInterval, and as soon as the
// queue drains after it dropped a trigger, until ctx is done.
func (e *Engine) reconcileLoop(ctx context.Context) {
	tick := time.NewTicker(e.cfg.ReconcileInterval)
	defer tick.Stop()
	first := true
	for {
		if err := e.Reconcile(ctx); err != nil && ctx.Err() == nil {
			log.G(ctx).WithError(err).Warn("lazyconv: rule reconcile")
		}
		if first {
			close(e.reconciled)
			first = false
		}
		select {
		case <-tick.C:
		case <-e.reconcile:
		case <-ctx.Done():
			return
		}
	}
}

// Reconcile queues every image that a rule matches and that has no current
// output (converted from the digest its name points at now, with the rule's
// present options, and pushed if the rule pushes), but for a digest that
// failed for good; and, for rules with prune_outputs, deletes outputs whose
// source is gone. Images the queue has no room for wait for the next
// reconcile, which follows as soon as the queue drains.
func (e *Engine) Reconcile(ctx context.Context) error {
	e.mu.Lock()
	e.dropped = false
	e.mu.Unlock()
	nss, err := e.reconcileNamespaces(ctx)
	if err != nil {
		return err
	}
	var queued, full int
listing:
	for _, ns := range nss {
		nctx := namespaces.WithNamespace(ctx, ns)
		imgs, err := e.is.List(nctx)
		if err != nil {
			return fmt.Errorf("listing the images of %s: %w", ns, err)
		}
		byName := make(map[string]images.Image, len(imgs))
		for _, img := range imgs {
			byName[img.Name] = img
		}
		for _, img := range imgs {
			if img.Labels[labels.RuleOutput] != "" {
				e.prune(nctx, ns, img, byName)
				continue
			}
			if img.Labels[labels.Temporary] != "" {
				continue
			}
			var todo []Rule
			for _, r := range e.matching(ns, img.Name) {
				d := img.Target.Digest.String()
				if img.Labels[labels.RuleFailedDigestPrefix+r.TagSuffix] == d {
					continue // failed for good
				}
				if img.Labels[labels.RuleGaveUpDigestPrefix+r.TagSuffix] == d {
					// out of retries last time: try again (the job skips a digest so marked)
					e.label(nctx, img, map[string]string{labels.RuleGaveUpDigestPrefix + r.TagSuffix: ""})
				}
				if out, ok := byName[r.Output(img.Name)]; ok && IsCurrent(r, img, out) {
					continue
				}
				todo = append(todo, r)
			}
			if len(todo) == 0 {
				continue
			}
			if err := e.trigger(nctx, ns, img.Name, todo, true); err != nil {
				full++ // the queue is full: the reconcile after it drains goes on
				break listing
			}
			queued += len(todo)
		}
	}
	if queued > 0 || full > 0 {
		log.G(ctx).Infof("lazyconv: rule reconcile queued %d conversions (queue full: %t; reconcile goes on once it drains)", queued, full > 0)
	}
	return nil
}

// reconcileNamespaces are the namespaces any rule applies to.
func (e *Engine) reconcileNamespaces(ctx context.Context) ([]string, error) {
	var listed []string
	for _, r := range e.cfg.Rules {
		if len(r.Namespaces) == 0 {
			all, err := e.namespaces(ctx)
			if err != nil {
				return nil, fmt.Errorf("listing namespaces: %w", err)
			}
			return all, nil
		}
		for _, ns := range r.Namespaces {
			if !slices.Contains(listed, ns) {
				listed = append(listed, ns)
			}
		}
	}
	return listed, nil
}

// prune deletes out, a rule's output, when the rule prunes and its source
// is gone (deleted while the daemon was down or while its event was missed).
func (e *Engine) prune(ctx context.Context, ns string, out images.Image, byName map[string]images.Image) {
	r, ok := e.rule(out.Labels[labels.RuleOutput])
	if !ok || !r.PruneOutputs {
		return
	}
	from := out.Labels[labels.ImageConvertedFrom]
	if _, alive := byName[from]; alive || from == "" || !r.Applies(ns, from) || r.Output(from) != out.Name {
		return
	}
	e.deleteOutput(ctx, r, from, out)
}

// Deleted prunes the outputs of an image deleted from namespace, for the
// rules that prune.
func (e *Engine) Deleted(ctx context.Context, namespace, name string) {
	for _, r := range e.matching(namespace, name) {
		if !r.PruneOutputs {
			continue
		}
		out, err := e.is.Get(ctx, r.Output(name))
		if err != nil {
			continue
		}
		e.deleteOutput(ctx, r, name, out)
	}
}

// deleteOutput deletes out if it is r's output of the image named from.
func (e *Engine) deleteOutput(ctx context.Context, r Rule, from string, out images.Image) {
	if out.Labels[labels.RuleOutput] != r.TagSuffix || out.Labels[labels.ImageConvertedFrom] != from {
		return // not this rule's output of that image: someone else's image
	}
	if err := e.is.Delete(ctx, out.Name); err != nil && !errdefs.IsNotFound(err) {
		log.G(ctx).WithError(err).Warnf("lazyconv: pruning %s (its source %s is deleted)", out.Name, from)
		return
	}
	e.metrics.pruned.Inc()
	log.G(ctx).Infof("lazyconv: pruned %s: its source %s is deleted", out.Name, from)
}
