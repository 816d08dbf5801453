package converter

import (
	"fmt"
	"strings"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
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
