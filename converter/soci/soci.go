//go:build cgo

package soci

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strconv"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/awslabs/soci-snapshotter/ztoc"
	"github.com/awslabs/soci-snapshotter/ztoc/compression"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/options"
	"github.com/lazyconv/lazyconv/internal/layerio"
	"github.com/lazyconv/lazyconv/labels"
)

// BuildToolIdentifier is the build tool a zTOC and an index name: `soci
// convert`'s (and soci-snapshotter's library default), so that the bytes
// are the same as soci's for the same layer and span size.
const BuildToolIdentifier = "AWS SOCI CLI v0.2"

// Options configures SOCI indexing.
type Options struct {
	// SpanSize is the uncompressed bytes between two gzip checkpoints of a
	// zTOC (soci's default, 4 MiB).
	SpanSize int64 `option:"span-size" variant:"span" usage:"SOCI span size: uncompressed bytes between gzip checkpoints"`
	// MinLayerSize is the smallest layer (compressed bytes) that gets a
	// zTOC; smaller layers are fetched whole (soci's default, 10 MiB).
	MinLayerSize int64 `option:"min-layer-size" variant:"min" usage:"SOCI: smallest layer (bytes) that gets a zTOC"`
}

// DefaultOptions are soci's defaults.
func DefaultOptions() Options { return Options{SpanSize: 4 << 20, MinLayerSize: 10 << 20} }

// MaxSpanSize is the largest span size: a span is inflated whole when it
// is read (by soci-snapshotter) or checked (VerifyZTOC).
const MaxSpanSize = 64 << 20

// Validate refuses a span size below 1 KiB or above MaxSpanSize and a
// negative minimum.
func (o Options) Validate() error {
	if o.SpanSize < 1<<10 || o.SpanSize > MaxSpanSize {
		return fmt.Errorf("SOCI span size must be between 1024 and %d bytes, got %d: %w", MaxSpanSize, o.SpanSize, errdefs.ErrInvalidArgument)
	}
	if o.MinLayerSize < 0 {
		return fmt.Errorf("SOCI minimum layer size must not be negative, got %d: %w", o.MinLayerSize, errdefs.ErrInvalidArgument)
	}
	return nil
}

// variant is the variant name of a layer's zTOC: its label on the layer
// blob points at it. The minimum layer size only decides whether a layer
// gets one, so it is not part of it.
func (o Options) variant() string {
	return options.Variant("soci-ztoc", struct {
		SpanSize int64 `variant:"span"`
	}{o.SpanSize}, struct {
		SpanSize int64 `variant:"span"`
	}{DefaultOptions().SpanSize})
}

// indexes reports whether the layer gets a zTOC: a gzip layer of at least
// the minimum size.
func (o Options) indexes(layer ocispec.Descriptor) bool {
	comp, err := converter.LayerCompression(layer.MediaType)
	return err == nil && comp == converter.Gzip && layer.Size >= o.MinLayerSize
}

// cachedZTOC is the stored zTOC the layer's variant label names, if any.
func cachedZTOC(ctx context.Context, cs content.Store, layer ocispec.Descriptor, o Options) (digest.Digest, int64, bool) {
	info, err := cs.Info(ctx, layer.Digest)
	if err != nil {
		return "", 0, false
	}
	cached, ok := labels.Variant(info, o.variant())
	if !ok {
		return "", 0, false
	}
	ci, err := cs.Info(ctx, cached)
	if err != nil {
		return "", 0, false
	}
	return cached, ci.Size, true
}

// ZTOC returns the zTOC descriptor of a layer (with soci's annotations),
// building it and storing it in cs (under ctx's lease) unless the layer's
// variant label already names a stored one. A layer smaller than
// MinLayerSize, or not a gzip tar, or holding a sparse file, gets none
// (nil, nil).
func ZTOC(ctx context.Context, cs content.Store, layer ocispec.Descriptor, o Options) (*ocispec.Descriptor, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if !o.indexes(layer) {
		return nil, nil
	}
	if _, err := cs.Info(ctx, layer.Digest); err != nil {
		return nil, err
	}
	desc := ocispec.Descriptor{MediaType: soci.SociLayerMediaType}
	if cached, size, ok := cachedZTOC(ctx, cs, layer, o); ok {
		desc.Digest, desc.Size = cached, size
		return annotated(desc, layer, o), nil
	}
	toc, _, err := build(ctx, cs, layer, o, false)
	if errors.Is(err, errSparse) {
		return nil, nil // fetched whole (see errSparse)
	}
	if err != nil {
		return nil, err
	}
	r, zdesc, err := ztoc.Marshal(toc)
	if err != nil {
		return nil, err
	}
	ref := "lazyconv-" + o.variant() + "-" + layer.Digest.Encoded()
	if err := content.WriteBlob(ctx, cs, ref, r, zdesc); err != nil && !errdefs.IsAlreadyExists(err) {
		return nil, fmt.Errorf("storing the zTOC of %s: %w", layer.Digest, err)
	}
	if err := labels.Set(ctx, cs, layer.Digest, map[string]string{labels.VariantKey(o.variant()): zdesc.Digest.String()}); err != nil {
		return nil, err
	}
	desc.Digest, desc.Size = zdesc.Digest, zdesc.Size
	return annotated(desc, layer, o), nil
}

// annotated is the zTOC's descriptor as a SOCI index lists it. soci's
// xattr optimization (com.amazon.soci.disable-xattrs) is off, as in `soci
// convert` without --optimizations.
func annotated(desc, layer ocispec.Descriptor, o Options) *ocispec.Descriptor {
	desc.Annotations = map[string]string{
		soci.IndexAnnotationImageLayerMediaType: layer.MediaType,
		soci.IndexAnnotationImageLayerDigest:    layer.Digest.String(),
		soci.IndexAnnotationSociSpanSize:        strconv.FormatInt(o.SpanSize, 10),
	}
	return &desc
}

// maxCheckpointBytes bounds what a zTOC's gzip checkpoints may hold in
// memory while it is built (32 KiB of window per span): 64 MiB, at least 8
// GiB of tar at soci's default span.
const maxCheckpointBytes = 64 << 20

// build makes the zTOC of a layer in one pass over it: zlib inflates it
// once (checkpointer), recording soci's gzip checkpoints as it goes, and
// the tar it yields is parsed once (tarTable): each header checked as every
// format's source is (layerio: paths, entries, trailing bytes, the limits)
// and listed in the file table as soci's TOC builder lists it. Soci's builder makes two
// passes (zlib for the checkpoints, Go's gzip for the file table); the
// zTOC is the same, byte for byte. With diffID, the tar is also hashed and
// its digest returned (a conversion, which keeps the layer as it is, does
// not need it).
func build(ctx context.Context, cs content.Store, layer ocispec.Descriptor, o Options, diffID bool) (*ztoc.Ztoc, digest.Digest, error) {
	ra, err := layerio.OpenBlob(ctx, cs, layer)
	if err != nil {
		return nil, "", err
	}
	defer ra.Close()
	cp, err := newCheckpointer(io.NewSectionReader(ra, 0, layer.Size), o.SpanSize)
	if err != nil {
		return nil, "", err
	}
	defer cp.Close()
	var tarReader io.Reader = contextReader{ctx, cp}
	var h digest.Digester
	if diffID {
		h = digest.SHA256.Digester()
		tarReader = io.TeeReader(tarReader, h.Hash())
	}
	toc, tarSize, err := tarTable(tarReader, layerio.NewCheck(ctx), converter.LimitsFrom(ctx).MaxTOCBytes)
	if err == nil {
		_, err = io.Copy(io.Discard, tarReader) // nothing but the gzip trailer, read by zlib
	}
	if err != nil {
		if ctxErr := context.Cause(ctx); ctxErr != nil {
			return nil, "", ctxErr
		}
		if errdefs.IsInvalidArgument(err) || errdefs.IsNotFound(err) || errdefs.IsUnavailable(err) {
			return nil, "", fmt.Errorf("layer %s: %w", layer.Digest, err)
		}
		return nil, "", fmt.Errorf("layer %s: %v: %w", layer.Digest, err, errdefs.ErrInvalidArgument)
	}
	digests := make([]digest.Digest, len(cp.points))
	for i, p := range cp.points {
		start, end := p.in, layer.Size
		if p.bits != 0 {
			start--
		}
		if i+1 < len(cp.points) {
			end = cp.points[i+1].in
		}
		if digests[i], err = digest.FromReader(io.NewSectionReader(ra, start, end-start)); err != nil {
			return nil, "", err
		}
	}
	info := ztoc.CompressionInfo{MaxSpanID: compression.SpanID(len(cp.points) - 1), SpanDigests: digests, Checkpoints: cp.blob(),
		CompressionAlgorithm: compression.Gzip}
	return &ztoc.Ztoc{Version: ztoc.Version09, TOC: toc, CompressedArchiveSize: compression.Offset(layer.Size),
		UncompressedArchiveSize: tarSize, BuildToolIdentifier: BuildToolIdentifier, CompressionInfo: info}, digestOf(h), nil
}

func digestOf(h digest.Digester) digest.Digest {
	if h == nil {
		return ""
	}
	return h.Digest()
}

// contextReader stops reading once ctx is done.
type contextReader struct {
	ctx context.Context
	r   io.Reader
}

func (c contextReader) Read(p []byte) (int, error) {
	if err := context.Cause(c.ctx); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// Index writes the SOCI index manifest v2 of a manifest's zTOCs (in layer
// order) and its config to cs, and returns its descriptor (artifactType
// set, as an image index lists it).
func Index(ctx context.Context, cs content.Store, ztocs []ocispec.Descriptor) (ocispec.Descriptor, error) {
	if len(ztocs) == 0 {
		return ocispec.Descriptor{}, fmt.Errorf("no layer is large enough for a zTOC: %w", soci.ErrEmptyIndex)
	}
	idx, b, err := marshalIndex(ztocs)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	empty := []byte("{}")
	if err := content.WriteBlob(ctx, cs, "lazyconv-soci-config-"+digest.FromBytes(empty).Encoded(), bytes.NewReader(empty),
		idx.Config); err != nil && !errdefs.IsAlreadyExists(err) {
		return ocispec.Descriptor{}, err
	}
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(b), Size: int64(len(b)),
		ArtifactType: soci.SociIndexArtifactTypeV2}
	gc := map[string]string{}
	for i, z := range ztocs {
		gc[fmt.Sprintf("containerd.io/gc.ref.content.ztoc.%d", i)] = z.Digest.String()
	}
	gc["containerd.io/gc.ref.content.config"] = idx.Config.Digest.String()
	if err := content.WriteBlob(ctx, cs, "lazyconv-soci-index-"+desc.Digest.Encoded(), bytes.NewReader(b), desc,
		content.WithLabels(gc)); err != nil && !errdefs.IsAlreadyExists(err) {
		return ocispec.Descriptor{}, err
	}
	return desc, nil
}

// marshalIndex is the SOCI index v2 of these zTOCs as soci writes it.
func marshalIndex(ztocs []ocispec.Descriptor) (*soci.Index, []byte, error) {
	idx := soci.NewIndex(soci.V2, ztocs, nil, map[string]string{soci.IndexAnnotationBuildToolIdentifier: BuildToolIdentifier})
	b, err := soci.MarshalIndex(idx)
	return idx, b, err
}

// ManifestIndex builds the zTOCs of a manifest's layers and its SOCI index
// v2 (soci.ErrEmptyIndex when no layer gets a zTOC).
func ManifestIndex(ctx context.Context, cs content.Store, manifest ocispec.Descriptor, o Options) (ocispec.Descriptor, error) {
	var m ocispec.Manifest
	if _, err := converter.ReadDocument(ctx, cs, &m, manifest); err != nil {
		return ocispec.Descriptor{}, err
	}
	return layersIndex(ctx, cs, m.Layers, o)
}

// layersIndex builds the zTOCs of these layers, on every core at once
// (each is one pass of each inflater over its layer), and their SOCI index
// in layer order.
func layersIndex(ctx context.Context, cs content.Store, layers []ocispec.Descriptor, o Options) (ocispec.Descriptor, error) {
	built := make([]*ocispec.Descriptor, len(layers))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.GOMAXPROCS(0))
	for i, l := range layers {
		g.Go(func() error {
			z, err := ZTOC(gctx, cs, l, o)
			built[i] = z
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return ocispec.Descriptor{}, err
	}
	var ztocs []ocispec.Descriptor
	for _, z := range built {
		if z != nil {
			ztocs = append(ztocs, *z)
		}
	}
	return Index(ctx, cs, ztocs)
}
