package stargz

import (
	"context"
	"fmt"
	"io"
	"strconv"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/options"
	"github.com/lazyconv/lazyconv/internal/layerio"
	"github.com/lazyconv/lazyconv/labels"
)

// PrioritizedOptions configures optimized (prioritized) eStargz: the eStargz
// options, plus what a record says of one layer.
type PrioritizedOptions struct {
	EStargzOptions
	// Files are the paths in the layer to put first, in access order.
	Files []string `variant:"files"`
	// Reuse keeps layers that already are eStargz (it decides whether a
	// layer is converted, never what a conversion writes).
	Reuse bool `variant:"-"`
}

// DefaultPrioritizedOptions are eStargz's defaults with no file and no reuse.
func DefaultPrioritizedOptions() PrioritizedOptions {
	return PrioritizedOptions{EStargzOptions: DefaultEStargzOptions()}
}

// prioritizedConverter writes optimized eStargz: the given files first, then
// the prefetch landmark, then the rest (or the no-prefetch landmark first
// when no file is given). It reorders entries, so unlike the default
// converter it is not lossless; it is the explicit optimized path.
type prioritizedConverter struct {
	opts    PrioritizedOptions
	variant string
}

// NewPrioritizedEStargz returns the optimized (prioritized, not lossless)
// eStargz converter for one layer, with o.Files first.
func NewPrioritizedEStargz(o PrioritizedOptions) (converter.LayerConverter, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	return &prioritizedConverter{opts: o, variant: options.Variant("estargz-optimized", o, DefaultPrioritizedOptions())}, nil
}

// Variant is "estargz-optimized", qualified by the file list's digest and
// non-default options.
func (c *prioritizedConverter) Variant() string { return c.variant }

// MediaType is the gzip layer type of the source's family.
func (c *prioritizedConverter) MediaType(src string) string {
	return converter.LayerMediaType(src, converter.Gzip)
}

// Keep keeps eStargz layers when asked to reuse them.
func (c *prioritizedConverter) Keep(ctx context.Context, cs content.Store, desc ocispec.Descriptor) (*ocispec.Descriptor, map[string]string, error) {
	if !c.opts.Reuse {
		if _, err := converter.LayerCompression(desc.MediaType); err != nil {
			return nil, nil, err
		}
		return nil, nil, nil
	}
	return keepEStargz(ctx, cs, desc)
}

// Convert builds the prioritized layer with estargz.Build (which stages the
// decompressed layer in temporary files to reorder it).
func (c *prioritizedConverter) Convert(ctx context.Context, cs content.Store, desc ocispec.Descriptor, counters converter.Counters) (converter.Output, error) {
	ra, err := layerio.OpenBlob(ctx, cs, desc)
	if err != nil {
		return converter.Output{}, err
	}
	defer ra.Close()
	var missed []string
	blob, err := estargz.Build(io.NewSectionReader(ra, 0, ra.Size()), append(c.opts.buildOptions(),
		estargz.WithPrioritizedFiles(c.opts.Files), estargz.WithAllowPrioritizeNotFound(&missed), estargz.WithContext(ctx))...)
	if err != nil {
		if ctxErr := context.Cause(ctx); ctxErr != nil {
			return converter.Output{}, ctxErr
		}
		return converter.Output{}, fmt.Errorf("building optimized eStargz: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	defer blob.Close()
	if counters.In != nil {
		counters.In.Add(desc.Size)
	}
	var annotations map[string]string
	written, err := layerio.WriteBlob(ctx, cs, layerio.IngestRef(c.variant, desc.Digest), counters.Out, func(w io.Writer) (map[string]string, error) {
		if _, err := io.Copy(w, blob); err != nil {
			return nil, err
		}
		uncompressed, err := blob.UncompressedSize()
		if err != nil {
			return nil, err
		}
		annotations = map[string]string{
			labels.TOCDigestAnnotation:        blob.TOCDigest().String(),
			labels.UncompressedSizeAnnotation: strconv.FormatInt(uncompressed, 10),
		}
		lbls := map[string]string{labels.Uncompressed: blob.DiffID().String(), labels.EStargz: labels.FormatBool(true)}
		labels.AnnotationsToLabels(annotations, lbls)
		return lbls, nil
	})
	if err != nil {
		return converter.Output{}, err
	}
	out := ocispec.Descriptor{MediaType: c.MediaType(desc.MediaType), Digest: written.Digest, Size: written.Size, Annotations: annotations}
	return converter.Output{Desc: out, DiffID: blob.DiffID()}, nil
}
