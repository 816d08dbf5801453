// Package recompress rewrites layers with another compression (none, gzip
// or zstd), keeping the tar stream byte for byte, so the diffID is unchanged.
package recompress

import (
	"context"
	"fmt"
	"io"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/options"
	"github.com/lazyconv/lazyconv/internal/layerio"
	"github.com/lazyconv/lazyconv/labels"
)

// Options configures recompression (see package options for the tags).
type Options struct {
	// Level is the compressor's level (0: its default; gzip -2..9, zstd
	// 1..22; an uncompressed layer has none).
	Level int `option:"level" variant:"level" usage:"compression level (0: the compressor's default)"`
}

// Validate reports a level the target compression lacks with ErrInvalidArgument.
func (o Options) Validate(target converter.Compression) error {
	switch target {
	case converter.Uncompressed:
		if o.Level != 0 {
			return fmt.Errorf("an uncompressed layer has no level: %w", errdefs.ErrInvalidArgument)
		}
	case converter.Gzip:
		if o.Level != 0 && (o.Level < gzip.HuffmanOnly || o.Level > gzip.BestCompression) {
			return fmt.Errorf("gzip compression level %d out of range [%d, %d]: %w",
				o.Level, gzip.HuffmanOnly, gzip.BestCompression, errdefs.ErrInvalidArgument)
		}
	case converter.Zstd:
		if o.Level < 0 || o.Level > 22 {
			return fmt.Errorf("zstd level %d out of range [1, 22]: %w", o.Level, errdefs.ErrInvalidArgument)
		}
	default:
		return fmt.Errorf("unknown compression %d: %w", target, errdefs.ErrInvalidArgument)
	}
	return nil
}

type recompressConverter struct {
	target  converter.Compression
	opts    Options
	variant string
}

// New returns a converter that rewrites layers with the target compression
// (converter.Uncompressed, Gzip or Zstd), keeping the tar stream as it is.
// Layers already in the target compression are kept.
func New(target converter.Compression, o Options) (converter.LayerConverter, error) {
	if err := o.Validate(target); err != nil {
		return nil, err
	}
	return &recompressConverter{target: target, opts: o, variant: options.Variant(Name(target), o, Options{})}, nil
}

// Name is the format name of a target compression: "uncompressed", "gzip" or "zstd".
func Name(target converter.Compression) string {
	if target == converter.Uncompressed {
		return "uncompressed"
	}
	return target.String()
}

// Variant is the format name, qualified by a non-default level.
func (c *recompressConverter) Variant() string { return c.variant }

// KeepsDiffID: only the compression changes.
func (c *recompressConverter) KeepsDiffID() bool { return true }

// MediaType is the source's family with the target compression.
func (c *recompressConverter) MediaType(src string) string {
	return converter.LayerMediaType(src, c.target)
}

// Keep keeps layers already in the target compression.
func (c *recompressConverter) Keep(_ context.Context, _ content.Store, desc ocispec.Descriptor) (*ocispec.Descriptor, map[string]string, error) {
	comp, err := converter.LayerCompression(desc.MediaType)
	if err != nil {
		return nil, nil, err
	}
	if comp == c.target {
		return &desc, nil, nil
	}
	return nil, nil, nil
}

// Convert decompresses the source and compresses it again.
func (c *recompressConverter) Convert(ctx context.Context, cs content.Store, desc ocispec.Descriptor, counters converter.Counters) (converter.Output, error) {
	src, err := layerio.Open(ctx, cs, desc, counters.In)
	if err != nil {
		return converter.Output{}, err
	}
	defer src.Close()
	blob, err := layerio.WriteBlob(ctx, cs, layerio.IngestRef(c.variant, desc.Digest), counters.Out, func(w io.Writer) (map[string]string, error) {
		zw, err := c.compressor(w)
		if err != nil {
			return nil, err
		}
		if _, err := io.Copy(zw, src); err != nil {
			zw.Close()
			return nil, src.InputError(err)
		}
		if err := zw.Close(); err != nil {
			return nil, err
		}
		return map[string]string{labels.Uncompressed: src.DiffID().String()}, nil
	})
	if err != nil {
		return converter.Output{}, err
	}
	out := ocispec.Descriptor{MediaType: c.MediaType(desc.MediaType), Digest: blob.Digest, Size: blob.Size}
	return converter.Output{Desc: out, DiffID: src.DiffID(), SourceDiffID: src.DiffID()}, nil
}

func (c *recompressConverter) compressor(w io.Writer) (io.WriteCloser, error) {
	switch c.target {
	case converter.Gzip:
		level := c.opts.Level
		if level == 0 {
			level = gzip.DefaultCompression
		}
		return gzip.NewWriterLevel(w, level)
	case converter.Zstd:
		opts := []zstd.EOption{zstd.WithEncoderConcurrency(1)}
		if c.opts.Level != 0 {
			opts = append(opts, zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(c.opts.Level)))
		}
		return zstd.NewWriter(w, opts...)
	default:
		return nopWriteCloser{w}, nil
	}
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

// VerifyPublished checks a recompression made elsewhere: it must
// decompress to the source's tar (sourceDiffID), which the layer checks
// (names, limits) read as they stream by. Such a layer carries no
// annotations.
func (c *recompressConverter) VerifyPublished(ctx context.Context, cs content.Store, desc ocispec.Descriptor, sourceDiffID digest.Digest) (converter.Verified, error) {
	if comp, err := converter.LayerCompression(desc.MediaType); err != nil || comp != c.target {
		return converter.Verified{}, fmt.Errorf("media type %q is not %s's: %w", desc.MediaType, c.variant, errdefs.ErrInvalidArgument)
	}
	src, err := layerio.Open(ctx, cs, desc, nil)
	if err != nil {
		return converter.Verified{}, err
	}
	defer src.Close()
	if err := src.Drain(); err != nil {
		return converter.Verified{}, src.InputError(err)
	}
	if err := src.Checked(); err != nil {
		return converter.Verified{}, err
	}
	if got := src.DiffID(); got != sourceDiffID {
		return converter.Verified{}, fmt.Errorf("it is %s uncompressed, not the source's %s: %w", got, sourceDiffID, errdefs.ErrInvalidArgument)
	}
	return converter.Verified{DiffID: sourceDiffID}, nil
}
