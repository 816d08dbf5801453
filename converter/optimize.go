package converter

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/labels"
)

// prioritizedConverter writes optimized eStargz: the given files first, then
// the prefetch landmark, then the rest (or the no-prefetch landmark first
// when no file is given). It reorders entries, so unlike the default
// converter it is not lossless; it is the explicit optimized path.
type prioritizedConverter struct {
	files     []string
	level     int
	chunkSize int
	reuse     bool
}

// NewPrioritizedEStargz returns the optimized (prioritized, not lossless)
// eStargz converter for one layer, with files (paths in the layer, in access
// order) first. With reuse, layers that already are eStargz are kept.
// Options are the eStargz converter's.
func NewPrioritizedEStargz(files []string, reuse bool, opts ...EStargzOption) (LayerConverter, error) {
	base := &tocConverter{level: DefaultEStargzCompressionLevel, chunkSize: DefaultEStargzChunkSize}
	for _, o := range opts {
		if err := o(base); err != nil {
			return nil, err
		}
	}
	return &prioritizedConverter{files: files, level: base.level, chunkSize: base.chunkSize, reuse: reuse}, nil
}

// Variant is "estargz-optimized", qualified by the file list's digest and
// non-default options.
func (c *prioritizedConverter) Variant() string {
	opts := map[string]string{"files": digest.FromString(strings.Join(c.files, "\n")).Encoded()[:16]}
	if c.level != DefaultEStargzCompressionLevel {
		opts["level"] = strconv.Itoa(c.level)
	}
	if c.chunkSize != DefaultEStargzChunkSize {
		opts["chunk"] = strconv.Itoa(c.chunkSize)
	}
	return labels.VariantName("estargz-optimized", opts)
}

// MediaType is the gzip layer type of the source's family.
func (c *prioritizedConverter) MediaType(src string) string { return LayerMediaType(src, Gzip) }

// Keep keeps eStargz layers when asked to reuse them.
func (c *prioritizedConverter) Keep(ctx context.Context, cs content.Store, desc ocispec.Descriptor) (*ocispec.Descriptor, map[string]string, error) {
	if !c.reuse {
		if _, err := LayerCompression(desc.MediaType); err != nil {
			return nil, nil, err
		}
		return nil, nil, nil
	}
	return keepEStargz(ctx, cs, desc)
}

// Convert builds the prioritized layer with estargz.Build (which stages the
// decompressed layer in temporary files to reorder it).
func (c *prioritizedConverter) Convert(ctx context.Context, cs content.Store, desc ocispec.Descriptor, counters Counters) (Converted, error) {
	if _, err := LayerCompression(desc.MediaType); err != nil {
		return Converted{}, err
	}
	ra, err := cs.ReaderAt(ctx, desc)
	if err != nil {
		return Converted{}, err
	}
	defer ra.Close()
	var missed []string
	blob, err := estargz.Build(io.NewSectionReader(ra, 0, ra.Size()),
		estargz.WithPrioritizedFiles(c.files), estargz.WithAllowPrioritizeNotFound(&missed),
		estargz.WithCompressionLevel(c.level), estargz.WithChunkSize(c.chunkSize), estargz.WithContext(ctx))
	if err != nil {
		if ctxErr := context.Cause(ctx); ctxErr != nil {
			return Converted{}, ctxErr
		}
		return Converted{}, fmt.Errorf("building optimized eStargz: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	defer blob.Close()
	if counters.In != nil {
		counters.In.Add(desc.Size)
	}
	var annotations map[string]string
	ref := "lazyconv-" + c.Variant() + "-" + desc.Digest.Encoded()
	written, err := writeBlob(ctx, cs, ref, counters.Out, func(w io.Writer) (map[string]string, error) {
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
		return Converted{}, err
	}
	out := ocispec.Descriptor{MediaType: c.MediaType(desc.MediaType), Digest: written.Digest, Size: written.Size, Annotations: annotations}
	return Converted{Desc: out, DiffID: blob.DiffID()}, nil
}
