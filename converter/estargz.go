package converter

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"runtime"
	"strconv"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/labels"
)

const (
	// DefaultEStargzCompressionLevel is gzip's best compression, as
	// stargz-snapshotter, nerdctl and BuildKit use by default.
	DefaultEStargzCompressionLevel = 9
	// DefaultEStargzChunkSize is 0: estargz's own default (4 MiB) applies.
	DefaultEStargzChunkSize = 0
)

// EStargzOption configures the eStargz converter.
type EStargzOption func(*tocConverter) error

// WithEStargzCompressionLevel sets the gzip level (-2 to 9; default 9).
func WithEStargzCompressionLevel(level int) EStargzOption {
	return func(c *tocConverter) error {
		if err := validGzipLevel(level); err != nil {
			return err
		}
		c.level = level
		return nil
	}
}

// WithEStargzChunkSize sets the largest run of a regular file's bytes kept in
// one gzip stream (0: estargz's default of 4 MiB).
func WithEStargzChunkSize(size int) EStargzOption { return withChunkSize(size) }

func withChunkSize(size int) func(*tocConverter) error {
	return func(c *tocConverter) error {
		if size < 0 {
			return fmt.Errorf("chunk size must not be negative, got %d: %w", size, errdefs.ErrInvalidArgument)
		}
		c.chunkSize = size
		return nil
	}
}

// tocConverter writes layers in a format with a table of contents, through
// estargz's lossless writer: eStargz (gzip) or zstd:chunked.
type tocConverter struct {
	format       string      // variant base name
	out          Compression // output compression
	level        int
	defaultLevel int
	chunkSize    int
	// newCompressor returns a fresh compressor for one conversion (its
	// state, hashes and zstd:chunked metadata, is never shared) writing to
	// out, and the writer estargz's writer must write to.
	newCompressor func(level int, out io.Writer) (tocCompressor, io.Writer)
	// keep reports whether a source already is in the format.
	keep func(ctx context.Context, cs content.Store, desc ocispec.Descriptor) (*ocispec.Descriptor, map[string]string, error)
}

// tocCompressor is an estargz.Compressor that also tells what the lossless
// check and the descriptor annotations need.
type tocCompressor interface {
	estargz.Compressor
	// PayloadDigest is the digest of every uncompressed payload byte written.
	PayloadDigest() digest.Digest
	// UncompressedSize is the size of the blob once decompressed.
	UncompressedSize() int64
	// Annotations are format-specific descriptor annotations, known after the TOC is written.
	Annotations() map[string]string
}

// NewEStargz returns the lossless eStargz layer converter: estargz.Unpack of
// its output yields the source tar byte for byte. Layers that already are
// eStargz are kept. A layer that cannot be carried losslessly (it holds an
// eStargz TOC, or an entry estargz cannot represent) fails with
// ErrInvalidArgument.
func NewEStargz(opts ...EStargzOption) (LayerConverter, error) {
	c := &tocConverter{
		format: "estargz", out: Gzip,
		level: DefaultEStargzCompressionLevel, defaultLevel: DefaultEStargzCompressionLevel, chunkSize: DefaultEStargzChunkSize,
		newCompressor: newEStargzCompressor,
		keep:          keepEStargz,
	}
	for _, o := range opts {
		if err := o(c); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Variant is the format, qualified by non-default options.
func (c *tocConverter) Variant() string {
	opts := map[string]string{}
	if c.level != c.defaultLevel {
		opts["level"] = strconv.Itoa(c.level)
	}
	if c.chunkSize != DefaultEStargzChunkSize {
		opts["chunk"] = strconv.Itoa(c.chunkSize)
	}
	return labels.VariantName(c.format, opts)
}

// MediaType is the output compression's layer type in the source's family.
func (c *tocConverter) MediaType(src string) string { return LayerMediaType(src, c.out) }

// Keep keeps sources already in the format.
func (c *tocConverter) Keep(ctx context.Context, cs content.Store, desc ocispec.Descriptor) (*ocispec.Descriptor, map[string]string, error) {
	return c.keep(ctx, cs, desc)
}

// newEStargzCompressor compresses the gzip streams of one layer on every core
// (parallelCompressor), or in line with one core.
func newEStargzCompressor(level int, out io.Writer) (tocCompressor, io.Writer) {
	if workers := runtime.GOMAXPROCS(0); workers > 1 {
		return newParallelGzip(level, workers, out), io.Discard
	}
	return newPayloadCompressor(level), out
}

// keepEStargz keeps gzip layers that already are eStargz (filling in a
// missing TOC digest annotation from the TOC).
func keepEStargz(ctx context.Context, cs content.Store, desc ocispec.Descriptor) (*ocispec.Descriptor, map[string]string, error) {
	comp, err := LayerCompression(desc.MediaType)
	if err != nil {
		return nil, nil, err
	}
	if comp != Gzip {
		return nil, nil, nil
	}
	info, err := cs.Info(ctx, desc.Digest)
	if err != nil {
		return nil, nil, err
	}
	is, known := labels.IsEStargz(info)
	var learnt map[string]string
	if !known {
		if is, err = detectEStargz(ctx, cs, desc.Digest); err != nil {
			return nil, nil, err
		}
		learnt = map[string]string{labels.EStargz: labels.FormatBool(is)}
	}
	if !is {
		return nil, learnt, nil
	}
	keep := desc
	if _, ok := desc.Annotations[labels.TOCDigestAnnotation]; !ok {
		tocDigest, err := readTOCDigest(ctx, cs, desc)
		if err != nil {
			return nil, nil, err
		}
		keep.Annotations = map[string]string{}
		for k, v := range desc.Annotations {
			keep.Annotations[k] = v
		}
		keep.Annotations[labels.TOCDigestAnnotation] = tocDigest.String()
	}
	return &keep, learnt, nil
}

// Convert streams the layer through estargz's lossless writer.
func (c *tocConverter) Convert(ctx context.Context, cs content.Store, desc ocispec.Descriptor, counters Counters) (Converted, error) {
	src, err := openSource(ctx, cs, desc, counters.In)
	if err != nil {
		return Converted{}, err
	}
	defer src.Close()
	var (
		comp        tocCompressor
		diffID      digest.Digest
		annotations map[string]string
	)
	ref := "lazyconv-" + c.Variant() + "-" + desc.Digest.Encoded()
	blob, err := writeBlob(ctx, cs, ref, counters.Out, func(w io.Writer) (_ map[string]string, retErr error) {
		var layout io.Writer
		comp, layout = c.newCompressor(c.level, w)
		if a, ok := comp.(interface{ abort() }); ok {
			defer func() {
				if retErr != nil {
					a.abort()
				}
			}()
		}
		ew := estargz.NewWriterWithCompressor(layout, comp)
		ew.ChunkSize = c.chunkSize
		if err := ew.AppendTarLossLess(src); err != nil {
			return nil, inputError(ctx, src, err)
		}
		if err := src.drain(); err != nil {
			return nil, inputError(ctx, src, err)
		}
		tocDigest, err := ew.Close()
		if err != nil {
			return nil, err
		}
		diffID = digest.Digest(ew.DiffID())
		if comp.PayloadDigest() != src.DiffID() {
			return nil, fmt.Errorf("cannot be converted to %s losslessly (an entry, such as a sparse file, "+
				"would be rewritten: payload %s differs from source %s): %w",
				c.format, comp.PayloadDigest(), src.DiffID(), errdefs.ErrInvalidArgument)
		}
		annotations = map[string]string{
			labels.TOCDigestAnnotation:        tocDigest.String(),
			labels.UncompressedSizeAnnotation: strconv.FormatInt(comp.UncompressedSize(), 10),
		}
		maps.Copy(annotations, comp.Annotations())
		lbls := map[string]string{labels.Uncompressed: diffID.String()}
		if c.out == Gzip {
			lbls[labels.EStargz] = labels.FormatBool(true)
		}
		labels.AnnotationsToLabels(annotations, lbls)
		return lbls, nil
	})
	if err != nil {
		return Converted{}, err
	}
	out := ocispec.Descriptor{MediaType: c.MediaType(desc.MediaType), Digest: blob.Digest, Size: blob.Size, Annotations: annotations}
	return Converted{Desc: out, DiffID: diffID, SourceDiffID: src.DiffID()}, nil
}

// inputError classifies a failure while reading the source: a cancelled
// context stays what it is; anything the source or its tar gave is bad input.
func inputError(ctx context.Context, src *sourceStream, err error) error {
	if ctxErr := context.Cause(ctx); ctxErr != nil {
		return ctxErr
	}
	if src.inputErr != nil {
		err = src.inputErr
	}
	if errdefs.IsNotFound(err) || errdefs.IsUnavailable(err) {
		return err
	}
	return fmt.Errorf("reading source: %v: %w", err, errdefs.ErrInvalidArgument)
}

// IsEStargz reports whether the blob is eStargz: it has an eStargz footer and
// its TOC is the last entry (BuildKit's test). It reads only the footer and the
// TOC, and caches the answer as a label, so a second call reads nothing.
func IsEStargz(ctx context.Context, cs content.Store, dgst digest.Digest) (bool, error) {
	info, err := cs.Info(ctx, dgst)
	if err != nil {
		return false, err
	}
	if is, known := labels.IsEStargz(info); known {
		return is, nil
	}
	is, err := detectEStargz(ctx, cs, dgst)
	if err != nil {
		return false, err
	}
	info.Labels = map[string]string{labels.EStargz: labels.FormatBool(is)}
	if _, err := cs.Update(ctx, info, "labels."+labels.EStargz); err != nil {
		return false, fmt.Errorf("caching eStargz answer for %s: %w", dgst, err)
	}
	return is, nil
}

func detectEStargz(ctx context.Context, cs content.Provider, dgst digest.Digest) (bool, error) {
	ra, err := cs.ReaderAt(ctx, ocispec.Descriptor{Digest: dgst})
	if err != nil {
		return false, err
	}
	defer ra.Close()
	sr := io.NewSectionReader(ra, 0, ra.Size())
	tocOffset, _, err := estargz.OpenFooter(sr)
	if err != nil {
		return false, nil
	}
	if tocOffset < 0 || tocOffset >= ra.Size() {
		return false, nil
	}
	zr, err := new(estargz.GzipDecompressor).Reader(io.NewSectionReader(ra, tocOffset, ra.Size()-tocOffset))
	if err != nil {
		return false, nil
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	h, err := tr.Next()
	if err != nil || h.Name != estargz.TOCTarName {
		return false, nil
	}
	if _, err := tr.Next(); !errors.Is(err, io.EOF) {
		return false, nil
	}
	return true, nil
}

// readTOCDigest returns the digest of an eStargz layer's TOC JSON.
func readTOCDigest(ctx context.Context, cs content.Provider, desc ocispec.Descriptor) (digest.Digest, error) {
	ra, err := cs.ReaderAt(ctx, desc)
	if err != nil {
		return "", err
	}
	defer ra.Close()
	r, err := estargz.Open(io.NewSectionReader(ra, 0, ra.Size()))
	if err != nil {
		return "", fmt.Errorf("reading eStargz TOC: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return r.TOCDigest(), nil
}
