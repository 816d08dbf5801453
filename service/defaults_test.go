package service

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter/stargz"
)

// The eStargz level a conversion gets when it names none follows its
// deflate (stargz.DefaultLevel), whichever way the deflate was chosen; a
// level set anywhere keeps its meaning.
func TestEStargzLevelFollowsTheDeflate(t *testing.T) {
	def := stargz.DefaultDeflate()
	for _, tc := range []struct {
		name                string
		configured, request map[string]string
		wantLevel           int
		wantDeflate         string
	}{
		{"nothing set", nil, nil, stargz.DefaultLevel(def), def},
		{"requested deflate", nil, map[string]string{"deflate": "go"}, stargz.DefaultLevel("go"), "go"},
		{"configured deflate", map[string]string{"estargz_deflate": "go"}, nil, stargz.DefaultLevel("go"), "go"},
		{"requested level", nil, map[string]string{"deflate": "go", "compression-level": "5"}, 5, "go"},
		{"configured level", map[string]string{"estargz_compression_level": "9", "estargz_deflate": "go"}, nil, 9, "go"},
		{"configured level, requested deflate", map[string]string{"estargz_compression_level": "7"}, map[string]string{"deflate": "go"}, 7, "go"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := LookupFormat(FormatEStargz)
			require.NoError(t, err)
			configured := DefaultConfig().FormatOptions
			for k, v := range tc.configured {
				configured[k] = v
			}
			opts, err := f.resolveOptions(configured, tc.request)
			require.NoError(t, err)
			o := *opts.(*stargz.EStargzOptions)
			assert.Equal(t, tc.wantLevel, o.CompressionLevel)
			assert.Equal(t, tc.wantDeflate, o.Deflate)
		})
	}
}
