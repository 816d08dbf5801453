package converter

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"strings"
	"sync/atomic"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Compression is a layer blob's compression.
type Compression int

const (
	// Uncompressed is a plain tar.
	Uncompressed Compression = iota
	// Gzip is tar+gzip.
	Gzip
	// Zstd is tar+zstd.
	Zstd
)

// String returns the media type suffix of the compression ("", "gzip", "zstd").
func (c Compression) String() string {
	switch c {
	case Gzip:
		return "gzip"
	case Zstd:
		return "zstd"
	default:
		return ""
	}
}

// LayerCompression returns the compression a layer media type declares, or an
// ErrInvalidArgument error for media types that are not layers lazyconv reads.
func LayerCompression(mediaType string) (Compression, error) {
	if !images.IsLayerType(mediaType) {
		return 0, fmt.Errorf("media type %q is not a layer: %w", mediaType, errdefs.ErrInvalidArgument)
	}
	base, suffix, _ := strings.Cut(mediaType, "+")
	switch {
	case strings.HasSuffix(base, ".tar.gzip"), suffix == "gzip":
		return Gzip, nil
	case suffix == "zstd":
		return Zstd, nil
	case suffix == "" && (strings.HasSuffix(base, ".tar") || strings.HasSuffix(base, ".rootfs.diff.tar")):
		return Uncompressed, nil
	default:
		return 0, fmt.Errorf("unsupported layer media type %q: %w", mediaType, errdefs.ErrInvalidArgument)
	}
}

// LayerMediaType returns the layer media type of the same family (Docker or
// OCI, distributable or not) as mediaType, with compression c.
func LayerMediaType(mediaType string, c Compression) string {
	docker := images.IsDockerType(mediaType)
	foreign := strings.Contains(mediaType, "foreign") || strings.Contains(mediaType, "nondistributable")
	switch {
	case docker && foreign:
		if c == Uncompressed {
			return images.MediaTypeDockerSchema2LayerForeign
		}
		return images.MediaTypeDockerSchema2LayerForeignGzip
	case docker && c == Uncompressed:
		return images.MediaTypeDockerSchema2Layer
	case docker && c == Gzip:
		return images.MediaTypeDockerSchema2LayerGzip
	case docker:
		// Docker has no zstd layer type; zstd layers are OCI.
		return ocispec.MediaTypeImageLayerZstd
	}
	base := ocispec.MediaTypeImageLayer
	if foreign {
		//lint:ignore SA1019 old images still carry non-distributable layers
		base = ocispec.MediaTypeImageLayerNonDistributable
	}
	if c == Uncompressed {
		return base
	}
	return base + "+" + c.String()
}

// sourceStream is a layer blob opened for conversion: a decompressed tar stream
// that hashes what it yields (the source diffID), counts the compressed bytes
// read, and remembers the first error the blob or its decompression gave, so
// that a failed conversion can tell bad input from a failing store.
type sourceStream struct {
	ctx       context.Context
	ra        content.ReaderAt
	counted   *countingReader
	decomp    io.ReadCloser
	diffHash  hash.Hash
	tarBytes  int64
	inputErr  error
	closeOnce atomic.Bool
}

// openSource opens desc from cs for reading its uncompressed tar. bytesIn, if
// not nil, is advanced by the compressed bytes read.
func openSource(ctx context.Context, cs content.Provider, desc ocispec.Descriptor, bytesIn *atomic.Int64) (*sourceStream, error) {
	declared, err := LayerCompression(desc.MediaType)
	if err != nil {
		return nil, err
	}
	ra, err := cs.ReaderAt(ctx, desc)
	if err != nil {
		return nil, err
	}
	counted := &countingReader{r: io.NewSectionReader(ra, 0, ra.Size()), n: bytesIn}
	br := bufio.NewReaderSize(counted, 1<<20)
	s := &sourceStream{ctx: ctx, ra: ra, counted: counted, diffHash: sha256.New()}
	actual := sniffCompression(br)
	if actual != declared && !(declared == Uncompressed && actual != Uncompressed) {
		// A compressed media type over data with no such magic is bad input;
		// an uncompressed media type over compressed data is read as what it is.
		ra.Close()
		return nil, fmt.Errorf("media type %q declares %s data but the blob is not: %w",
			desc.MediaType, declared, errdefs.ErrInvalidArgument)
	}
	switch actual {
	case Gzip:
		zr, err := gzip.NewReader(br)
		if err != nil {
			ra.Close()
			return nil, fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
		}
		s.decomp = zr
	case Zstd:
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
		if err != nil {
			ra.Close()
			return nil, fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
		}
		s.decomp = zr.IOReadCloser()
	default:
		s.decomp = io.NopCloser(br)
	}
	return s, nil
}

// Read yields the uncompressed tar, and stops when the context is done.
func (s *sourceStream) Read(p []byte) (int, error) {
	if err := context.Cause(s.ctx); err != nil {
		return 0, err
	}
	n, err := s.decomp.Read(p)
	if n > 0 {
		s.diffHash.Write(p[:n])
		s.tarBytes += int64(n)
	}
	if err != nil && err != io.EOF && s.inputErr == nil {
		s.inputErr = err
	}
	return n, err
}

// drain reads the rest of the stream, so that the diffID covers every byte and
// trailing corruption is noticed.
func (s *sourceStream) drain() error {
	_, err := io.Copy(io.Discard, s)
	return err
}

// DiffID is the digest of the uncompressed tar read so far.
func (s *sourceStream) DiffID() digest.Digest {
	return digest.NewDigestFromBytes(digest.SHA256, s.diffHash.Sum(nil))
}

// Close releases the blob.
func (s *sourceStream) Close() error {
	if !s.closeOnce.CompareAndSwap(false, true) {
		return nil
	}
	s.decomp.Close()
	return s.ra.Close()
}

func sniffCompression(br *bufio.Reader) Compression {
	head, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		return Gzip
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return Zstd
	default:
		return Uncompressed
	}
}

// countingReader counts the bytes read through it into n (if not nil).
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if c.n != nil {
		c.n.Add(int64(n))
	}
	return n, err
}
