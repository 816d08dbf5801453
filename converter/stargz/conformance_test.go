package stargz_test

import (
	"fmt"
	"testing"

	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/converter/stargz"
)

// deflateRows adds the Deflate option's row: the other deflate where the
// build has both, else fixed; and the default variant of a pure-Go build.
func deflateRows(name string, alternatives map[string]any) (map[string]any, map[string]string, string) {
	// The baseline is level 9 with libdeflate: the default level, chosen
	// later by measurement, is named in the variant.
	if stargz.DefaultDeflate() == stargz.DeflateLibdeflate {
		alternatives["Deflate"] = stargz.DeflateGo
		return alternatives, nil, fmt.Sprintf("%s.level-%d", name, stargz.DefaultLevel(stargz.DeflateLibdeflate))
	}
	return alternatives, map[string]string{"Deflate": "this build has no libdeflate: go is its only deflate"}, name + ".deflate-go"
}

func TestEStargzConformance(t *testing.T) {
	alternatives, fixed, defaultVariant := deflateRows("estargz", map[string]any{"CompressionLevel": 6, "ChunkSize": 1 << 20})
	convertertest.Run(t, convertertest.Format[stargz.EStargzOptions]{
		Name: "estargz", Defaults: stargz.DefaultEStargzOptions(), DefaultVariant: defaultVariant, New: stargz.NewEStargz,
		Alternatives: alternatives, Fixed: fixed,
		Invalid: []stargz.EStargzOptions{
			{CompressionLevel: 10}, {CompressionLevel: -3}, {CompressionLevel: 9, ChunkSize: -1},
			{CompressionLevel: 9, Deflate: "zlib"},
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
	alternatives, fixed, defaultVariant := deflateRows("estargz-optimized", map[string]any{"CompressionLevel": 6, "ChunkSize": 1 << 20, "Files": []string{"bin/big"}})
	convertertest.Run(t, convertertest.Format[stargz.PrioritizedOptions]{
		Name: "estargz-optimized", Defaults: defaults, DefaultVariant: defaultVariant, New: stargz.NewPrioritizedEStargz,
		Alternatives: alternatives, Fixed: fixed,
		Invalid: []stargz.PrioritizedOptions{
			{EStargzOptions: stargz.EStargzOptions{CompressionLevel: 10}},
			{EStargzOptions: stargz.EStargzOptions{CompressionLevel: 9, ChunkSize: -1}},
		},
	})
}
