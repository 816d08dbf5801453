package recompress_test

import (
	"testing"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/converter/recompress"
)

func TestRecompressConformance(t *testing.T) {
	for _, tc := range []struct {
		target       converter.Compression
		alternatives map[string]any
		fixed        map[string]string
		invalid      []recompress.Options
	}{
		{converter.Uncompressed, nil, map[string]string{"Level": "an uncompressed layer has no level"}, []recompress.Options{{Level: 1}}},
		{converter.Gzip, map[string]any{"Level": 1}, nil, []recompress.Options{{Level: 10}, {Level: -3}}},
		{converter.Zstd, map[string]any{"Level": 19}, nil, []recompress.Options{{Level: 23}, {Level: -1}}},
	} {
		name := recompress.Name(tc.target)
		t.Run(name, func(t *testing.T) {
			convertertest.Run(t, convertertest.Format[recompress.Options]{
				Name: name, New: func(o recompress.Options) (converter.LayerConverter, error) { return recompress.New(tc.target, o) },
				Alternatives: tc.alternatives, Fixed: tc.fixed, Invalid: tc.invalid,
			})
		})
	}
}
