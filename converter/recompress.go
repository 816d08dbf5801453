package converter

import (
	"context"
	"fmt"
	"io"
	"strconv"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/labels"
)

type recompressConverter struct {
	target Compression
	level  int // 0: the compressor's default
}

// NewRecompress returns a converter that rewrites layers with the target
// compression (Uncompressed, Gzip or Zstd), keeping the tar stream as it is.
// level 0 means the compressor's default. Layers already in the target
// compression are kept.
func NewRecompress(target Compression, level int) (LayerConverter, error) {
	switch target {
	case Uncompressed:
		if level != 0 {
			return nil, fmt.Errorf("an uncompressed layer has no level: %w", errdefs.ErrInvalidArgument)
		}
	case Gzip:
		if level != 0 {
			if err := validGzipLevel(level); err != nil {
				return nil, err
			}
		}
	case Zstd:
		if level < 0 || level > 22 {
			return nil, fmt.Errorf("zstd level %d out of range [1, 22]: %w", level, errdefs.ErrInvalidArgument)
		}
	default:
		return nil, fmt.Errorf("unknown compression %d: %w", target, errdefs.ErrInvalidArgument)
	}
	return &recompressConverter{target: target, level: level}, nil
}

// Variant is "uncompressed", "gzip" or "zstd", qualified by a non-default level.
func (c *recompressConverter) Variant() string {
	name := c.target.String()
	if name == "" {
		name = "uncompressed"
	}
	opts := map[string]string{}
	if c.level != 0 {
		opts["level"] = strconv.Itoa(c.level)
	}
	return labels.VariantName(name, opts)
}

// MediaType is the source's family with the target compression.
func (c *recompressConverter) MediaType(src string) string { return LayerMediaType(src, c.target) }

// Keep keeps layers already in the target compression.
func (c *recompressConverter) Keep(_ context.Context, _ content.Store, desc ocispec.Descriptor) (*ocispec.Descriptor, map[string]string, error) {
	comp, err := LayerCompression(desc.MediaType)
	if err != nil {
		return nil, nil, err
	}
	if comp == c.target {
		return &desc, nil, nil
	}
	return nil, nil, nil
}

// Convert decompresses the source and compresses it again.
func (c *recompressConverter) Convert(ctx context.Context, cs content.Store, desc ocispec.Descriptor, counters Counters) (Converted, error) {
	src, err := openSource(ctx, cs, desc, counters.In)
	if err != nil {
		return Converted{}, err
	}
	defer src.Close()
	ref := "lazyconv-" + c.Variant() + "-" + desc.Digest.Encoded()
	blob, err := writeBlob(ctx, cs, ref, counters.Out, func(w io.Writer) (map[string]string, error) {
		zw, err := c.compressor(w)
		if err != nil {
			return nil, err
		}
		if _, err := io.Copy(zw, src); err != nil {
			zw.Close()
			return nil, inputError(ctx, src, err)
		}
		if err := zw.Close(); err != nil {
			return nil, err
		}
		return map[string]string{labels.Uncompressed: src.DiffID().String()}, nil
	})
	if err != nil {
		return Converted{}, err
	}
	out := ocispec.Descriptor{MediaType: c.MediaType(desc.MediaType), Digest: blob.Digest, Size: blob.Size}
	return Converted{Desc: out, DiffID: src.DiffID(), SourceDiffID: src.DiffID()}, nil
}

func (c *recompressConverter) compressor(w io.Writer) (io.WriteCloser, error) {
	switch c.target {
	case Gzip:
		level := c.level
		if level == 0 {
			level = gzip.DefaultCompression
		}
		return gzip.NewWriterLevel(w, level)
	case Zstd:
		opts := []zstd.EOption{zstd.WithEncoderConcurrency(1)}
		if c.level != 0 {
			opts = append(opts, zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(c.level)))
		}
		return zstd.NewWriter(w, opts...)
	default:
		return nopWriteCloser{w}, nil
	}
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }
