package service

import (
	"context"
	"fmt"

	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"

	"github.com/lazyconv/lazyconv/labels"
)

// RecoverLeases deletes the conversion leases a previous process left behind
// (it crashed or was killed mid-conversion) in the given namespaces, so that
// garbage collection reclaims their half-made content. Call it at start-up,
// before serving.
func RecoverLeases(ctx context.Context, lm leases.Manager, nss []string) (int, error) {
	var n int
	for _, ns := range nss {
		nctx := namespaces.WithNamespace(ctx, ns)
		ls, err := lm.List(nctx, fmt.Sprintf("labels.%q", labels.LeaseConverting))
		if err != nil {
			return n, fmt.Errorf("listing leases in %s: %w", ns, err)
		}
		for _, l := range ls {
			if err := lm.Delete(nctx, l); err != nil && !errdefs.IsNotFound(err) {
				return n, err
			}
			n++
		}
	}
	return n, nil
}
