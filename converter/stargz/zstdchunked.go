package stargz

import (
	"bytes"
	"context"
	"fmt"
	"hash"
	"io"
	"maps"
	"runtime"
	"sync"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
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

// zstdStreams writes zstd:chunked's frames at one level: the frames
// stargz-snapshotter's compressor writes (a test checks them byte for byte),
// from pooled encoders that each compress on the calling goroutine only
// (the parallel compressor runs one per core; an encoder of its own
// goroutines would hold their buffers too).
type zstdStreams struct {
	level zstd.EncoderLevel
	pool  *sync.Pool
}

var zstdEncoderPools sync.Map // zstd.EncoderLevel -> *sync.Pool

func newZstdStreams(level int) zstdStreams {
	l := zstd.EncoderLevelFromZstd(level)
	p, _ := zstdEncoderPools.LoadOrStore(l, &sync.Pool{New: func() any {
		e, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(l), zstd.WithLowerEncoderMem(true), zstd.WithEncoderConcurrency(1))
		return e
	}})
	return zstdStreams{level: l, pool: p.(*sync.Pool)}
}

// Writer opens one frame into w.
func (z zstdStreams) Writer(w io.Writer) (estargz.WriteFlushCloser, error) {
	e := z.pool.Get().(*zstd.Encoder)
	e.Reset(w)
	return &pooledZstd{Encoder: e, pool: z.pool}, nil
}

func (z zstdStreams) compress(dst *bytes.Buffer, src []byte, flushed bool) error {
	zw, _ := z.Writer(dst)
	return writeStream(zw, src, flushed)
}

// pooledZstd is a frame whose encoder goes back to its pool when closed.
type pooledZstd struct {
	*zstd.Encoder
	pool *sync.Pool
}

func (p *pooledZstd) Close() error {
	err := p.Encoder.Close()
	p.Encoder.Reset(nil)
	p.pool.Put(p.Encoder)
	return err
}

// zstdChunkedCompressor is the sequential zstd:chunked compressor.
type zstdChunkedCompressor struct {
	streams  zstdStreams
	metadata map[string]string // the manifest annotations, once the TOC is written
}

func newZstdChunkedCompressor(level int, out io.Writer) (tocCompressor, io.Writer) {
	streams := newZstdStreams(level)
	if workers := runtime.GOMAXPROCS(0); workers > 1 {
		return newParallelZstdChunked(streams, workers, out), io.Discard
	}
	return &zstdChunkedCompressor{streams: streams}, out
}

// newParallelZstdChunked compresses zstd:chunked frames on every core.
func newParallelZstdChunked(streams zstdStreams, workers int, out io.Writer) *parallelCompressor {
	var metadata map[string]string
	return newParallelCompressor(workers, out, streams.compress,
		func(w io.Writer, off int64, toc tocSource, _ hash.Hash) (digest.Digest, error) {
			// The zstd:chunked TOC lives in skippable frames, outside the tar stream.
			d, m, err := writeZstdTOC(w, off, streams.level, toc)
			metadata = m
			return d, err
		},
		func() map[string]string { return maps.Clone(metadata) })
}

func (c *zstdChunkedCompressor) Writer(w io.Writer) (estargz.WriteFlushCloser, error) {
	return c.streams.Writer(w)
}

func (c *zstdChunkedCompressor) WriteTOCAndFooter(w io.Writer, off int64, toc tocSource, _ hash.Hash) (digest.Digest, error) {
	d, m, err := writeZstdTOC(w, off, c.streams.level, toc)
	c.metadata = m
	return d, err
}

// Annotations are the manifest checksum and position the TOC writer recorded.
func (c *zstdChunkedCompressor) Annotations() map[string]string { return maps.Clone(c.metadata) }
