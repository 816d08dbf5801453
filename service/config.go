package service

import (
	"fmt"

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
}

// DefaultConfig is the configuration with every option at its default.
func DefaultConfig() Config {
	return Config{
		DefaultFormat:           FormatEStargz,
		EStargzCompressionLevel: converter.DefaultEStargzCompressionLevel,
		EStargzChunkSize:        converter.DefaultEStargzChunkSize,

		ZstdChunkedCompressionLevel: converter.DefaultZstdChunkedCompressionLevel,
		ZstdChunkedChunkSize:        converter.DefaultEStargzChunkSize,
	}
}

// Formats a request can name.
const (
	FormatEStargz     = "estargz"
	FormatZstdChunked = "zstdchunked"
	FormatUncompress  = "uncompress"
	FormatGzip        = "gzip"
	FormatZstd        = "zstd"
	// FormatNone converts media types only (with oci).
	FormatNone = "none"
)

// Formats lists the formats this build serves, in the order Capabilities reports them.
var Formats = []string{FormatEStargz, FormatZstdChunked, FormatUncompress, FormatGzip, FormatZstd}

// validate checks the configuration, with ErrInvalidArgument on a bad value.
func (c Config) validate() error {
	if c.Workers < 0 {
		return fmt.Errorf("workers must not be negative, got %d: %w", c.Workers, errdefs.ErrInvalidArgument)
	}
	if _, err := layerConverterFor(c.DefaultFormat, c, nil); err != nil {
		return fmt.Errorf("default_format: %w", err)
	}
	for _, f := range Formats {
		if _, err := layerConverterFor(f, c, nil); err != nil {
			return fmt.Errorf("%s options: %w", f, err)
		}
	}
	return nil
}
