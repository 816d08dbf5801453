package stargz

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"maps"
	"strconv"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/internal/layerio"
	"github.com/lazyconv/lazyconv/labels"
)

// tocConverter writes layers in a format with a table of contents, through
// estargz's lossless writer: eStargz (gzip) or zstd:chunked. The format's
// constructor fills it from the format's options.
type tocConverter struct {
	format  string                // "estargz" or "zstdchunked", for messages
	variant string                // derived from the options by options.Variant
	out     converter.Compression // output compression
	// configure applies the format's layout settings (chunk size, ...).
	configure func(*layoutWriter)
	// newCompressor returns a fresh compressor for one conversion (its
	// state, hashes and zstd:chunked metadata, is never shared) writing to
	// out, and the writer estargz's writer must write to.
	newCompressor func(out io.Writer) (tocCompressor, io.Writer)
	// keep reports whether a source already is in the format.
	keep func(ctx context.Context, cs content.Store, desc ocispec.Descriptor) (*ocispec.Descriptor, map[string]string, error)
}

// tocCompressor compresses a layer's streams and writes its TOC for
// layoutWriter, and tells what the lossless check and the descriptor
// annotations need.
type tocCompressor interface {
	// Writer opens one compressed stream into w.
	Writer(w io.Writer) (estargz.WriteFlushCloser, error)
	// WriteTOCAndFooter writes the TOC and the footer at offset off, and
	// returns the TOC digest; diffHash takes any bytes the TOC adds to the
	// layer's uncompressed stream.
	WriteTOCAndFooter(w io.Writer, off int64, toc tocSource, diffHash hash.Hash) (digest.Digest, error)
	// Annotations are format-specific descriptor annotations, known after the TOC is written.
	Annotations() map[string]string
}

// Variant is the format, qualified by its non-default options.
func (c *tocConverter) Variant() string { return c.variant }

// KeepsDiffID: zstd:chunked keeps the source's tar (its TOC is in skippable
// frames); eStargz's TOC and footer are tar entries of their own.
func (c *tocConverter) KeepsDiffID() bool { return c.out == converter.Zstd }

// MediaType is the output compression's layer type in the source's family.
func (c *tocConverter) MediaType(src string) string { return converter.LayerMediaType(src, c.out) }

// Keep keeps sources already in the format.
func (c *tocConverter) Keep(ctx context.Context, cs content.Store, desc ocispec.Descriptor) (*ocispec.Descriptor, map[string]string, error) {
	return c.keep(ctx, cs, desc)
}

// Convert streams the layer through estargz's lossless writer, and proves
// the result lossless: the payload it compressed must hash to the source's
// diffID. A layer holding entries no lossless writer can carry (sparse
// files) is converted again from the rewritten tar (layerio.Rewrite): same
// files, other bytes, and reported as not lossless, naming them.
func (c *tocConverter) Convert(ctx context.Context, cs content.Store, desc ocispec.Descriptor, counters converter.Counters) (converter.Output, error) {
	out, sparse, err := c.convert(ctx, cs, desc, counters, nil)
	if err == nil || len(sparse) == 0 {
		return out, err
	}
	if counters.In != nil {
		counters.In.Store(0) // the source is read again
	}
	out, _, err = c.convert(ctx, cs, desc, counters, sparse)
	return out, err
}

// convert writes the layer from the source's tar or, given the sparse
// entries of an earlier pass, from its rewritten tar (reported not lossless,
// naming them). When the lossless pass fails it reads the rest of the
// source, so that a rule the tar breaks is the error, and returns the sparse
// entries that call for a rewrite.
func (c *tocConverter) convert(ctx context.Context, cs content.Store, desc ocispec.Descriptor, counters converter.Counters, sparse []string) (converter.Output, []string, error) {
	rewrite := len(sparse) > 0
	src, err := layerio.Open(ctx, cs, desc, counters.In)
	if err != nil {
		return converter.Output{}, nil, err
	}
	defer src.Close()
	// The lossless pass parses the source's tar once: the layout writer's
	// parse is the source's inspection (Inline) and its payload hash the
	// source's diffID hash. The rewrite pass parses the rewritten tar, which
	// the source's own inspection reads.
	var (
		stream     io.Reader                 = src
		inspection tarInspection             = src
		payload    func() (hash.Hash, error) = src.Hash
	)
	if rewrite {
		rw := layerio.Rewrite(src)
		defer rw.Close()
		stream, inspection, payload = rw, nil, rw.Hash
	} else {
		src.Inline()
	}
	var (
		diffID      digest.Digest
		annotations map[string]string
	)
	blob, err := layerio.WriteBlob(ctx, cs, layerio.IngestRef(c.variant, desc.Digest), counters.Out, func(w io.Writer) (_ map[string]string, retErr error) {
		comp, layout := c.newCompressor(w)
		if a, ok := comp.(interface{ abort() }); ok {
			defer func() {
				if retErr != nil {
					a.abort()
				}
			}()
		}
		spill, err := newEntrySpill(converter.ScratchDirFrom(ctx))
		if err != nil {
			return nil, err
		}
		defer spill.Close()
		ew := newLayoutWriter(layout, comp, spill)
		c.configure(ew)
		if err := ew.AppendTarLossLess(stream, inspection); err != nil {
			if errors.Is(err, errSparse) {
				return nil, err
			}
			return nil, src.InputError(err)
		}
		if _, err := io.Copy(io.Discard, stream); err != nil {
			return nil, src.InputError(err)
		}
		if err := src.Drain(); err != nil {
			return nil, src.InputError(err)
		}
		if err := src.Checked(); err != nil {
			return nil, err
		}
		payloadHash, err := payload()
		if err != nil {
			return nil, err
		}
		tocDigest, err := ew.Close(payloadHash)
		if err != nil {
			return nil, err
		}
		diffID = ew.DiffID()
		annotations = map[string]string{
			labels.TOCDigestAnnotation:        tocDigest.String(),
			labels.UncompressedSizeAnnotation: strconv.FormatInt(ew.UncompressedSize(), 10),
		}
		maps.Copy(annotations, comp.Annotations())
		if rewrite {
			annotations[labels.NotLosslessAnnotation] = converter.NotLosslessText(sparse)
		}
		lbls := map[string]string{labels.Uncompressed: diffID.String()}
		if c.out == converter.Gzip {
			lbls[labels.EStargz] = labels.FormatBool(true)
		}
		labels.AnnotationsToLabels(annotations, lbls)
		return lbls, nil
	})
	if err != nil {
		if rewrite || context.Cause(ctx) != nil {
			return converter.Output{}, nil, err
		}
		// Read the rest: a broken source or rule anywhere in the tar is the
		// answer; else sparse entries call for the rewrite.
		if drainErr := src.Drain(); drainErr != nil {
			return converter.Output{}, nil, src.InputError(drainErr)
		}
		if verdict := src.Checked(); verdict != nil {
			return converter.Output{}, nil, verdict
		}
		return converter.Output{}, src.Sparse(), err
	}
	out := ocispec.Descriptor{MediaType: c.MediaType(desc.MediaType), Digest: blob.Digest, Size: blob.Size, Annotations: annotations}
	return converter.Output{Desc: out, DiffID: diffID, SourceDiffID: src.DiffID(), NotLossless: sparse}, nil, nil
}

// validChunkSize reports an ErrInvalidArgument error for a negative chunk size.
func validChunkSize(size int) error {
	if size < 0 {
		return fmt.Errorf("chunk size must not be negative, got %d: %w", size, errdefs.ErrInvalidArgument)
	}
	return nil
}
