// Package stargz holds the formats with a table of contents that
// stargz-snapshotter reads: lossless eStargz, lossless zstd:chunked and
// optimized (prioritized) eStargz. They share estargz's writer with lazyconv's
// compressors (sequential, or every core at once with byte-identical output),
// a TOC writer that streams entries, eStargz detection and verification.
package stargz

import (
	"context"
	"io"
	"maps"
	"runtime"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/stargz-snapshotter/estargz"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/options"
	"github.com/lazyconv/lazyconv/labels"
)

// EStargzOptions configures eStargz conversion (see package options for the tags).
type EStargzOptions struct {
	// CompressionLevel is the gzip level, -2 to 9. The default depends on
	// the deflate (see DefaultLevel): 5 with libdeflate (no larger than
	// nerdctl's level 9, 2.2x faster than libdeflate's 9), 9 with
	// klauspost/compress.
	CompressionLevel int `option:"compression-level" variant:"level" usage:"eStargz gzip level (-2..9); unset, 5 with libdeflate and 9 with the go deflate: the fastest level no larger than nerdctl's level 9 (see README)"`
	// ChunkSize is the largest run of a regular file's bytes kept in one gzip
	// stream (0: estargz's default of 4 MiB).
	ChunkSize int `option:"chunk-size" variant:"chunk" usage:"eStargz chunk size in bytes (0: 4 MiB)"`
	// Deflate writes the gzip streams: "libdeflate" (the default where the
	// build has it) or "go" (klauspost/compress, pure Go). They write
	// different bytes, so a fleet mixing builds names one. Empty is the
	// build's default.
	Deflate string `option:"deflate" variant:"deflate" usage:"eStargz gzip implementation: libdeflate (default where built in) or go"`
}

// DefaultEStargzOptions are the options a request that sets none gets: the
// build's deflate at its default level.
func DefaultEStargzOptions() EStargzOptions {
	return EStargzOptions{CompressionLevel: DefaultLevel(DefaultDeflate()), Deflate: DefaultDeflate()}
}

// DefaultLevel is the level a conversion with deflate d gets when it names
// none, chosen by measurement (`make bench`, `benchreport -levels-only`):
// the fastest level whose eStargz output is no larger than nerdctl's
// default (stargz-snapshotter's writer at level 9, Go's compress/gzip) on
// every workload: a debootstrapped Debian with python3.11 and Go's sources,
// layers of Go's files, 300,000 small files. libdeflate: 5 (1.1-1.3 %
// smaller than nerdctl's, 2.2x faster than its own 9; 4 is 0.4-0.9 %
// larger). klauspost/compress: no level is, and only its 9 is within 0.5 %
// everywhere (+0.16 % at worst; 8 is 3.2x faster but +0.59 % on small
// files), so 9.
func DefaultLevel(d string) int {
	if d == DeflateLibdeflate {
		return 5
	}
	return 9
}

// Dependent: the level's default follows the deflate.
func (o *EStargzOptions) Dependent() []string { return []string{"compression-level"} }

// FollowDefaults gives a conversion that names its deflate but no level
// that deflate's default level (DefaultLevel), not the build's.
func (o *EStargzOptions) FollowDefaults(set func(name string) bool) {
	if set("deflate") && !set("compression-level") {
		o.CompressionLevel = DefaultLevel(o.resolved().Deflate)
	}
}

// variantBaseline is what variant keys leave out: level 9 written by
// libdeflate. A pure-Go build's default output is another variant
// ("estargz.deflate-go"), so that builds never take each other's blobs for
// their own.
func (o EStargzOptions) variantBaseline() EStargzOptions {
	return EStargzOptions{CompressionLevel: 9, Deflate: DeflateLibdeflate}
}

// resolved fills an empty Deflate with the build's default and names the
// linked libdeflate's version when it is not the one lazyconv is built
// with (see deflateIdentity): what the variant key is derived from.
func (o EStargzOptions) resolved() EStargzOptions {
	if o.Deflate == "" {
		o.Deflate = DefaultDeflate()
	}
	return o
}

// Validate reports a bad option with ErrInvalidArgument (libdeflate asked
// of a build without it: ErrUnavailable).
func (o EStargzOptions) Validate() error {
	if err := validGzipLevel(o.CompressionLevel); err != nil {
		return err
	}
	if err := validChunkSize(o.ChunkSize); err != nil {
		return err
	}
	return validDeflate(o.resolved().Deflate)
}

// The two writers an eStargz layer can come from take their settings here,
// side by side, so that an option reaches both: the lossless writer
// (configure) and estargz.Build for optimized eStargz (buildOptions).

func (o EStargzOptions) configure(w *layoutWriter) { w.SetChunkSize(o.ChunkSize) }

func (o EStargzOptions) buildOptions() []estargz.Option {
	return []estargz.Option{estargz.WithCompression(&buildCompression{streams: o.streams()}), estargz.WithChunkSize(o.ChunkSize)}
}

func (o EStargzOptions) streams() gzipStreams {
	return newGzipStreams(o.CompressionLevel, o.resolved().Deflate)
}

// variantKey is the options' part of a variant name (see options.Variant).
func (o EStargzOptions) variantKey() EStargzOptions {
	o = o.resolved()
	o.Deflate = deflateIdentity(o.Deflate)
	return o
}

// NewEStargz returns the lossless eStargz layer converter: estargz.Unpack of
// its output yields the source tar byte for byte. Layers that already are
// eStargz are kept. A layer that cannot be carried losslessly (it holds an
// eStargz TOC, or an entry estargz cannot represent) fails with
// ErrInvalidArgument.
func NewEStargz(o EStargzOptions) (converter.LayerConverter, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	streams := o.streams()
	return &tocConverter{
		format: "estargz", variant: options.Variant("estargz", o.variantKey(), o.variantBaseline()),
		out: converter.Gzip, configure: o.configure,
		newCompressor: func(out io.Writer) (tocCompressor, io.Writer) { return newEStargzCompressor(streams, out) },
		keep:          keepEStargz,
	}, nil
}

// newEStargzCompressor compresses the gzip streams of one layer on every core
// (parallelCompressor), or in line with one core.
func newEStargzCompressor(streams gzipStreams, out io.Writer) (tocCompressor, io.Writer) {
	if workers := runtime.GOMAXPROCS(0); workers > 1 {
		return newParallelGzip(streams, workers, out), io.Discard
	}
	return newGzipCompressor(streams), out
}

// keepEStargz keeps gzip layers that already are eStargz (filling in a
// missing TOC digest annotation from the TOC).
func keepEStargz(ctx context.Context, cs content.Store, desc ocispec.Descriptor) (*ocispec.Descriptor, map[string]string, error) {
	comp, err := converter.LayerCompression(desc.MediaType)
	if err != nil {
		return nil, nil, err
	}
	if comp != converter.Gzip {
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
		keep.Annotations = maps.Clone(desc.Annotations)
		if keep.Annotations == nil {
			keep.Annotations = map[string]string{}
		}
		keep.Annotations[labels.TOCDigestAnnotation] = tocDigest.String()
	}
	return &keep, learnt, nil
}
