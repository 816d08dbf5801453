package service

import (
	"context"
	"fmt"
	"strings"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/remote"
)

// layerSource is where a conversion finds a layer: the content store, else
// the snapshot containerd unpacked it into (rebuilt), else the image's
// registry (fetched). When none has it, the error says what each answered.
func (s *Service) layerSource(resolver remotes.Resolver, imageRef string) func(context.Context, ocispec.Descriptor, ocispec.Descriptor, int, converter.LayerReport) (converter.Ensured, error) {
	return func(ctx context.Context, layer, manifest ocispec.Descriptor, index int, report converter.LayerReport) (converter.Ensured, error) {
		if _, err := s.cs.Info(ctx, layer.Digest); err == nil {
			return converter.Ensured{Desc: layer}, nil
		} else if !errdefs.IsNotFound(err) {
			return converter.Ensured{}, err
		}
		tried := []string{"content store: no such blob"}
		if s.rebuilder != nil {
			report.Rebuilding()
			rebuilt, err := s.rebuilder.Layer(ctx, manifest, index)
			if err == nil {
				return converter.Ensured{Desc: rebuilt, Origin: converter.OriginSnapshot}, nil
			}
			if ctxErr := context.Cause(ctx); ctxErr != nil {
				return converter.Ensured{}, ctxErr
			}
			tried = append(tried, "snapshots: "+err.Error())
		} else {
			tried = append(tried, "snapshots: none here (embedded store)")
		}
		err := s.fetcher.Ensure(ctx, resolver, layer, manifest, imageRef, report.Fetching())
		if err == nil {
			return converter.Ensured{Desc: layer, Origin: converter.OriginRegistry}, nil
		}
		if ctxErr := context.Cause(ctx); ctxErr != nil {
			return converter.Ensured{}, ctxErr
		}
		var class error = errdefs.ErrNotFound
		if remote.Transient(err) {
			class = errdefs.ErrUnavailable // the registry may serve it later: a rule tries again
		}
		tried = append(tried, "registry: "+err.Error())
		return converter.Ensured{}, fmt.Errorf("layer %s (%d of manifest %s) could be had from nowhere: %s: %w",
			layer.Digest, index, manifest.Digest, strings.Join(tried, "; "), class)
	}
}
