package stargz

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
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
	key, baseline := o, DefaultPrioritizedOptions()
	key.EStargzOptions, baseline.EStargzOptions = o.variantKey(), o.variantBaseline()
	return &prioritizedConverter{opts: o, variant: options.Variant("estargz-optimized", key, baseline)}, nil
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
// decompressed layer in temporary files to reorder it). The layer is read
// once through layerio first, so that it obeys the same rules and limits as
// any conversion; a layer with sparse files is built from its rewritten tar
// (staged in a temporary file), and its output names them as not lossless.
func (c *prioritizedConverter) Convert(ctx context.Context, cs content.Store, desc ocispec.Descriptor, counters converter.Counters) (converter.Output, error) {
	sparse, srcDiffID, err := checkLayer(ctx, cs, desc)
	if err != nil {
		return converter.Output{}, err
	}
	var input *io.SectionReader
	if len(sparse) > 0 {
		staged, err := stageRewritten(ctx, cs, desc)
		if err != nil {
			return converter.Output{}, err
		}
		defer staged.Close()
		input = staged.SectionReader
	} else {
		ra, err := layerio.OpenBlob(ctx, cs, desc)
		if err != nil {
			return converter.Output{}, err
		}
		defer ra.Close()
		input = io.NewSectionReader(ra, 0, ra.Size())
	}
	var missed []string
	blob, err := estargz.Build(input, append(c.opts.buildOptions(),
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
		if len(sparse) > 0 {
			annotations[labels.NotLosslessAnnotation] = converter.NotLosslessText(sparse)
		}
		lbls := map[string]string{labels.Uncompressed: blob.DiffID().String(), labels.EStargz: labels.FormatBool(true)}
		labels.AnnotationsToLabels(annotations, lbls)
		return lbls, nil
	})
	if err != nil {
		return converter.Output{}, err
	}
	out := ocispec.Descriptor{MediaType: c.MediaType(desc.MediaType), Digest: written.Digest, Size: written.Size, Annotations: annotations}
	return converter.Output{Desc: out, DiffID: blob.DiffID(), SourceDiffID: srcDiffID, NotLossless: sparse}, nil
}

// checkLayer reads the layer once through layerio: it returns the rule the
// tar breaks, or its sparse entries and diffID.
func checkLayer(ctx context.Context, cs content.Store, desc ocispec.Descriptor) ([]string, digest.Digest, error) {
	src, err := layerio.Open(ctx, cs, desc, nil)
	if err != nil {
		return nil, "", err
	}
	defer src.Close()
	src.Reserve(estargz.TOCTarName, estargz.PrefetchLandmark, estargz.NoPrefetchLandmark)
	if err := src.Drain(); err != nil {
		return nil, "", src.InputError(err)
	}
	if err := src.Checked(); err != nil {
		return nil, "", err
	}
	return src.Sparse(), src.DiffID(), nil
}

// stagedTar is a rewritten tar in a temporary file, removed on Close.
type stagedTar struct {
	*io.SectionReader
	f *os.File
}

func (s stagedTar) Close() error {
	s.f.Close()
	return os.Remove(s.f.Name())
}

// stageRewritten writes the layer's rewritten tar (layerio.Rewrite) to a
// temporary file, as estargz.Build needs random access to its input.
func stageRewritten(ctx context.Context, cs content.Store, desc ocispec.Descriptor) (stagedTar, error) {
	src, err := layerio.Open(ctx, cs, desc, nil)
	if err != nil {
		return stagedTar{}, err
	}
	defer src.Close()
	f, err := os.CreateTemp("", "lazyconv-rewritten-*.tar")
	if err != nil {
		return stagedTar{}, err
	}
	rw := layerio.Rewrite(src)
	defer rw.Close()
	n, err := io.Copy(f, rw)
	if err != nil {
		f.Close()
		os.Remove(f.Name())
		return stagedTar{}, src.InputError(err)
	}
	return stagedTar{SectionReader: io.NewSectionReader(f, 0, n), f: f}, nil
}
