package stargz_test

import (
	"testing"

	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/converter/stargz"
)

func TestEStargzConformance(t *testing.T) {
	convertertest.Run(t, convertertest.Format[stargz.EStargzOptions]{
		Name: "estargz", Defaults: stargz.DefaultEStargzOptions(), New: stargz.NewEStargz,
		Alternatives: map[string]any{"CompressionLevel": 6, "ChunkSize": 1 << 20},
		Invalid: []stargz.EStargzOptions{
			{CompressionLevel: 10}, {CompressionLevel: -3}, {CompressionLevel: 9, ChunkSize: -1},
		},
	})
}

func TestZstdChunkedConformance(t *testing.T) {
	convertertest.Run(t, convertertest.Format[stargz.ZstdChunkedOptions]{
		Name: "zstdchunked", Defaults: stargz.DefaultZstdChunkedOptions(), New: stargz.NewZstdChunked,
		Alternatives: map[string]any{"CompressionLevel": 9, "ChunkSize": 1 << 20},
		Invalid: []stargz.ZstdChunkedOptions{
			{CompressionLevel: 0}, {CompressionLevel: 23}, {CompressionLevel: 3, ChunkSize: -1},
		},
	})
}

func TestPrioritizedEStargzConformance(t *testing.T) {
	defaults := stargz.DefaultPrioritizedOptions()
	defaults.Reuse = true // an output converted again is kept only when eStargz is reused
	convertertest.Run(t, convertertest.Format[stargz.PrioritizedOptions]{
		Name: "estargz-optimized", Defaults: defaults, New: stargz.NewPrioritizedEStargz,
		Alternatives: map[string]any{"CompressionLevel": 6, "ChunkSize": 1 << 20, "Files": []string{"bin/big"}},
		Invalid: []stargz.PrioritizedOptions{
			{EStargzOptions: stargz.EStargzOptions{CompressionLevel: 10}},
			{EStargzOptions: stargz.EStargzOptions{CompressionLevel: 9, ChunkSize: -1}},
		},
	})
}
