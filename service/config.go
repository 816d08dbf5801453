package service

import (
	"fmt"
	"slices"

	"github.com/containerd/errdefs"

	"github.com/lazyconv/lazyconv/converter"
)

// Config is the conversion service's configuration: the plugin's section of
// containerd's config.toml ([plugins.'io.containerd.grpc.v1.lazyconv']) and
// the [converter] section of lazyconvd's config.
type Config struct {
	// Workers bounds the layers converted at once (0: GOMAXPROCS).
	Workers int `toml:"workers"`
	// DefaultFormat is the layer format of requests that name none.
	DefaultFormat string `toml:"default_format"`
	// EStargzCompressionLevel is the default gzip level of eStargz layers.
	EStargzCompressionLevel int `toml:"estargz_compression_level"`
	// EStargzChunkSize is the default eStargz chunk size (0: 4 MiB).
	EStargzChunkSize int `toml:"estargz_chunk_size"`
	// ZstdChunkedCompressionLevel is the default zstd level of zstd:chunked layers.
	ZstdChunkedCompressionLevel int `toml:"zstdchunked_compression_level"`
	// ZstdChunkedChunkSize is the default zstd:chunked chunk size (0: 4 MiB).
	ZstdChunkedChunkSize int `toml:"zstdchunked_chunk_size"`
	// NydusBuilderPath is the nydus-image builder ("": found on PATH).
	NydusBuilderPath string `toml:"nydus_builder_path"`
	// NydusWorkDir is the builder's work directory ("": a temporary one).
	NydusWorkDir string `toml:"nydus_work_dir"`
	// NydusFsVersion is the default RAFS version ("5" or "6").
	NydusFsVersion string `toml:"nydus_fs_version"`
	// NydusCompressor is the default nydus blob compressor (zstd, lz4_block, none).
	NydusCompressor string `toml:"nydus_compressor"`
}

// DefaultConfig is the configuration with every option at its default.
func DefaultConfig() Config {
	return Config{
		DefaultFormat:           FormatEStargz,
		EStargzCompressionLevel: converter.DefaultEStargzCompressionLevel,
		EStargzChunkSize:        converter.DefaultEStargzChunkSize,

		ZstdChunkedCompressionLevel: converter.DefaultZstdChunkedCompressionLevel,
		ZstdChunkedChunkSize:        converter.DefaultEStargzChunkSize,

		NydusFsVersion:  "6",
		NydusCompressor: "zstd",
	}
}

// Formats a request can name.
const (
	FormatEStargz     = "estargz"
	FormatZstdChunked = "zstdchunked"
	FormatNydus       = "nydus"
	// FormatEStargzOptimized is prioritized (not lossless) eStargz; requests
	// name the files to put first.
	FormatEStargzOptimized = "estargz-optimized"
	FormatUncompress       = "uncompress"
	FormatGzip             = "gzip"
	FormatZstd             = "zstd"
	// FormatNone converts media types only (with oci).
	FormatNone = "none"
)

// Formats lists the formats this build serves, in the order Capabilities reports them.
var Formats = []string{FormatEStargz, FormatEStargzOptimized, FormatZstdChunked, FormatNydus, FormatUncompress, FormatGzip, FormatZstd}

// validate checks the configuration, with ErrInvalidArgument on a bad value.
func (c Config) validate() error {
	if c.Workers < 0 {
		return fmt.Errorf("workers must not be negative, got %d: %w", c.Workers, errdefs.ErrInvalidArgument)
	}
	if c.DefaultFormat == FormatNone || !slices.Contains(Formats, c.DefaultFormat) {
		return fmt.Errorf("default_format %q is none of %v: %w", c.DefaultFormat, Formats, errdefs.ErrInvalidArgument)
	}
	// Every format's options must be valid, whether a builder is installed or not.
	builder := converter.NydusBuilder{Found: true}
	for _, f := range Formats {
		if _, err := planFor(f, c, builder, nil); err != nil {
			return fmt.Errorf("%s options: %w", f, err)
		}
	}
	return nil
}
