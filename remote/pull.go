package remote

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// PullLazy fetches an image's index, manifests and configs, but none of its
// layers, and stores it as an image named ref. Every fetched blob records
// where it came from, so that Fetcher can fetch the layers when (and if) a
// conversion needs them.
func PullLazy(ctx context.Context, cs content.Store, is images.Store, lm leases.Manager, resolver remotes.Resolver, ref string, pm platforms.MatchComparer) (images.Image, error) {
	return PullLazyAs(ctx, cs, is, lm, resolver, ref, images.Image{}, pm)
}

// PullLazyAs is PullLazy storing the image as as.Name (ref's name when
// empty) with as.Labels: a pull by digest (host/repository@digest) stored
// under the tag it was pushed as.
func PullLazyAs(ctx context.Context, cs content.Store, is images.Store, lm leases.Manager, resolver remotes.Resolver, ref string, as images.Image, pm platforms.MatchComparer) (images.Image, error) {
	if pm == nil {
		pm = platforms.All
	}
	l, err := lm.Create(ctx, leases.WithRandomID(), leases.WithExpiration(time.Hour))
	if err != nil {
		return images.Image{}, err
	}
	defer lm.Delete(context.WithoutCancel(ctx), l) //nolint:errcheck // expires anyway
	ctx = leases.WithLease(ctx, l.ID)

	name, desc, err := resolver.Resolve(ctx, ref)
	if err != nil {
		return images.Image{}, fmt.Errorf("resolving %s: %w", ref, err)
	}
	fetcher, err := resolver.Fetcher(ctx, name)
	if err != nil {
		return images.Image{}, err
	}
	labelSource, err := docker.AppendDistributionSourceLabel(cs, name)
	if err != nil {
		return images.Image{}, err
	}
	// containerd's label names the host without its port; lazyconv's names
	// it with, so that a registry on a port of its own is found again.
	src, srcErr := SourceOf(name)
	fetch := remotes.FetchHandler(cs, fetcher)
	var handler images.HandlerFunc = func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		if images.IsLayerType(desc.MediaType) {
			return nil, images.ErrSkipDesc // fetched on first use
		}
		if _, err := fetch(ctx, desc); err != nil {
			return nil, err
		}
		if _, err := labelSource(ctx, desc); err != nil {
			return nil, err
		}
		if srcErr == nil {
			if err := AddSource(ctx, cs, desc.Digest, src); err != nil {
				return nil, err
			}
		}
		return images.Children(ctx, cs, desc)
	}
	handler = images.SetChildrenLabels(cs, images.FilterPlatforms(handler, pm))
	if err := images.Dispatch(ctx, handler, nil, desc); err != nil {
		return images.Image{}, err
	}
	img := images.Image{Name: name, Target: desc, Labels: as.Labels}
	if as.Name != "" {
		img.Name = as.Name
	}
	fields := []string{"target"}
	for k := range as.Labels {
		fields = append(fields, "labels."+k)
	}
	stored, err := is.Update(ctx, img, fields...)
	if errdefs.IsNotFound(err) {
		stored, err = is.Create(ctx, img)
	}
	return stored, err
}
