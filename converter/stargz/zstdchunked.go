package stargz

import (
	"bytes"
	"context"
	"fmt"
	"hash"
	"io"
	"maps"
	"runtime"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/options"
	"github.com/lazyconv/lazyconv/labels"
)

// ZstdChunkedOptions configures zstd:chunked conversion (see package options for the tags).
type ZstdChunkedOptions struct {
	// CompressionLevel is the zstd level, 1 to 22 (default 3, zstd's default, as nerdctl uses).
	CompressionLevel int `option:"compression-level" variant:"level" usage:"zstd:chunked zstd level (1..22)"`
	// ChunkSize is the largest run of a regular file's bytes in one zstd
	// frame (0: 4 MiB).
	ChunkSize int `option:"chunk-size" variant:"chunk" usage:"zstd:chunked chunk size in bytes (0: 4 MiB)"`
}

// DefaultZstdChunkedOptions are the options a request that sets none gets.
func DefaultZstdChunkedOptions() ZstdChunkedOptions { return ZstdChunkedOptions{CompressionLevel: 3} }

// Validate reports a bad option with ErrInvalidArgument.
func (o ZstdChunkedOptions) Validate() error {
	if o.CompressionLevel < 1 || o.CompressionLevel > 22 {
		return fmt.Errorf("zstd compression level %d out of range [1, 22]: %w", o.CompressionLevel, errdefs.ErrInvalidArgument)
	}
	return validChunkSize(o.ChunkSize)
}

// NewZstdChunked returns the lossless zstd:chunked layer converter (the
// format of stargz-snapshotter and containers/storage): decompressing its
// output yields the source tar byte for byte, so the diffID is unchanged.
// Each conversion has its own compressor, so that concurrent conversions
// never share the TOC metadata that becomes the layer's annotations.
func NewZstdChunked(o ZstdChunkedOptions) (converter.LayerConverter, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	return &tocConverter{
		format: "zstdchunked", variant: options.Variant("zstdchunked", o, DefaultZstdChunkedOptions()),
		out: converter.Zstd, configure: func(w *layoutWriter) { w.SetChunkSize(o.ChunkSize) },
		newCompressor: func(out io.Writer) (tocCompressor, io.Writer) {
			return newZstdChunkedCompressor(o.CompressionLevel, out)
		},
		keep: keepZstdChunked,
	}, nil
}

// keepZstdChunked keeps zstd layers whose descriptor already carries the
// zstd:chunked manifest annotations.
func keepZstdChunked(_ context.Context, _ content.Store, desc ocispec.Descriptor) (*ocispec.Descriptor, map[string]string, error) {
	comp, err := converter.LayerCompression(desc.MediaType)
	if err != nil {
		return nil, nil, err
	}
	if comp == converter.Zstd && desc.Annotations[labels.ZstdChunkedManifestChecksumAnnotation] != "" &&
		desc.Annotations[labels.ZstdChunkedManifestPositionAnnotation] != "" {
		return &desc, nil, nil
	}
	return nil, nil, nil
}

// zstdChunkedCompressor is stargz-snapshotter's zstd:chunked compressor with
// the payload hashed for the lossless check: the sequential zstd path.
type zstdChunkedCompressor struct {
	inner    *zstdchunked.Compressor // its streams
	metadata map[string]string       // the manifest annotations, once the TOC is written
}

func newZstdChunkedCompressor(level int, out io.Writer) (tocCompressor, io.Writer) {
	inner := &zstdchunked.Compressor{CompressionLevel: zstd.EncoderLevelFromZstd(level)}
	if workers := runtime.GOMAXPROCS(0); workers > 1 {
		return newParallelZstdChunked(inner, workers, out), io.Discard
	}
	return &zstdChunkedCompressor{inner: inner}, out
}

// newParallelZstdChunked compresses zstd:chunked frames on every core.
func newParallelZstdChunked(inner *zstdchunked.Compressor, workers int, out io.Writer) *parallelCompressor {
	var metadata map[string]string
	compress := func(dst *bytes.Buffer, src []byte, flushed bool) error {
		zw, err := inner.Writer(dst)
		if err != nil {
			return err
		}
		return writeStream(zw, src, flushed)
	}
	return newParallelCompressor(workers, out, compress,
		func(w io.Writer, off int64, toc tocSource, _ hash.Hash) (digest.Digest, error) {
			// The zstd:chunked TOC lives in skippable frames, outside the tar stream.
			d, m, err := writeZstdTOC(w, off, inner.CompressionLevel, toc)
			metadata = m
			return d, err
		},
		func() map[string]string { return maps.Clone(metadata) })
}

func (c *zstdChunkedCompressor) Writer(w io.Writer) (estargz.WriteFlushCloser, error) {
	return c.inner.Writer(w)
}

func (c *zstdChunkedCompressor) WriteTOCAndFooter(w io.Writer, off int64, toc tocSource, _ hash.Hash) (digest.Digest, error) {
	d, m, err := writeZstdTOC(w, off, c.inner.CompressionLevel, toc)
	c.metadata = m
	return d, err
}

// Annotations are the manifest checksum and position the TOC writer recorded.
func (c *zstdChunkedCompressor) Annotations() map[string]string { return maps.Clone(c.metadata) }
