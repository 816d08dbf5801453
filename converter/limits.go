package converter

import "context"

// Limits bound what a layer may make a conversion hold, read or write. They
// are the daemon's defence against hostile images: a layer beyond one is
// refused with ErrInvalidArgument naming the limit, and nothing is written.
// Zero means the default; a negative value means no limit.
type Limits struct {
	// MaxEntries bounds the tar entries of one layer.
	MaxEntries int64
	// MaxTrailingBytes bounds the bytes after a tar's end-of-archive marker
	// (tar tools pad to a record, 10 KiB; anything more is carried in memory
	// by estargz's lossless writer).
	MaxTrailingBytes int64
	// MaxExpandedBytes bounds the logical size of the sparse files of one
	// layer once their holes are written as zeros.
	MaxExpandedBytes int64
	// MaxTOCBytes bounds the uncompressed size of a table of contents read
	// from a layer (is it eStargz, its TOC digest, verification).
	MaxTOCBytes int64
	// MaxZstdWindow bounds the window a zstd frame may declare, which is
	// the history its decoder holds (and touches once the frame's output
	// is larger): 22 KB of zstd can declare 512 MiB. The default, 128 MiB
	// (2^27), is `zstd --long`'s default and what the zstd CLI decodes
	// without being told more; levels 1-19 use at most 8 MiB.
	MaxZstdWindow int64
	// MaxDocumentBytes bounds an index, manifest or config read whole to
	// be converted. The default is the largest manifest containerd's
	// resolver fetches (docker.MaxManifestSize, 4*1048*1048 bytes).
	MaxDocumentBytes int64
	// MaxIndexDepth bounds the nesting of image indexes: the image's own
	// index is at depth 1, an index it lists at 2. Image layouts nest 2.
	MaxIndexDepth int64
}

// Default limits: see the Limits fields.
const (
	DefaultMaxEntries       = 1 << 20
	DefaultMaxTrailingBytes = 1 << 20
	DefaultMaxExpandedBytes = 4 << 30
	DefaultMaxTOCBytes      = 64 << 20
	DefaultMaxZstdWindow    = 1 << 27
	DefaultMaxDocumentBytes = 4 * 1048 * 1048
	DefaultMaxIndexDepth    = 4
)

// DefaultLimits are the limits when none are configured.
func DefaultLimits() Limits {
	return Limits{MaxEntries: DefaultMaxEntries, MaxTrailingBytes: DefaultMaxTrailingBytes,
		MaxExpandedBytes: DefaultMaxExpandedBytes, MaxTOCBytes: DefaultMaxTOCBytes, MaxZstdWindow: DefaultMaxZstdWindow,
		MaxDocumentBytes: DefaultMaxDocumentBytes, MaxIndexDepth: DefaultMaxIndexDepth}
}

// WithDefaults fills the zero fields with DefaultLimits.
func (l Limits) WithDefaults() Limits {
	d := DefaultLimits()
	for _, p := range []struct{ v, d *int64 }{
		{&l.MaxEntries, &d.MaxEntries}, {&l.MaxTrailingBytes, &d.MaxTrailingBytes},
		{&l.MaxExpandedBytes, &d.MaxExpandedBytes}, {&l.MaxTOCBytes, &d.MaxTOCBytes},
		{&l.MaxZstdWindow, &d.MaxZstdWindow}, {&l.MaxDocumentBytes, &d.MaxDocumentBytes},
		{&l.MaxIndexDepth, &d.MaxIndexDepth},
	} {
		if *p.v == 0 {
			*p.v = *p.d
		}
	}
	return l
}

// Exceeds reports whether n is beyond the limit max (a negative max is none).
func Exceeds(n, max int64) bool { return max >= 0 && n > max }

type limitsKey struct{}

// WithLimits returns a context whose conversions honour l. The Converter
// passes its ImageOptions' limits to every LayerConverter this way.
func WithLimits(ctx context.Context, l Limits) context.Context {
	return context.WithValue(ctx, limitsKey{}, l.WithDefaults())
}

// LimitsFrom returns the limits a conversion on ctx must honour.
func LimitsFrom(ctx context.Context) Limits {
	if l, ok := ctx.Value(limitsKey{}).(Limits); ok {
		return l
	}
	return DefaultLimits()
}
