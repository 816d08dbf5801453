package service

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter/stargz"
	"github.com/lazyconv/lazyconv/format"
)

// The eStargz level a conversion gets when it names none follows its
// deflate (stargz.DefaultLevel), whichever way the deflate was chosen: in
// the format's plugin section or in the request; a level set anywhere keeps
// its meaning.
func TestEStargzLevelFollowsTheDeflate(t *testing.T) {
	def := stargz.DefaultDeflate()
	for _, tc := range []struct {
		name        string
		section     format.Config
		request     map[string]string
		wantLevel   int
		wantDeflate string
	}{
		{"nothing set", nil, nil, stargz.DefaultLevel(def), def},
		{"requested deflate", nil, map[string]string{"deflate": "go"}, stargz.DefaultLevel("go"), "go"},
		{"configured deflate", format.Config{"deflate": "go"}, nil, stargz.DefaultLevel("go"), "go"},
		{"requested level", nil, map[string]string{"deflate": "go", "compression-level": "5"}, 5, "go"},
		{"configured level", format.Config{"compression_level": int64(9), "deflate": "go"}, nil, 9, "go"},
		{"configured level, requested deflate", format.Config{"compression_level": int64(7)}, map[string]string{"deflate": "go"}, 7, "go"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			loaded, err := format.Load(context.Background(), map[string]format.Config{FormatEStargz: tc.section}, nil)
			require.NoError(t, err)
			s := &Service{formats: loaded}
			f, err := s.format(FormatEStargz)
			require.NoError(t, err)
			opts, err := f.ResolveOptions(tc.request)
			require.NoError(t, err)
			o := *opts.(*stargz.EStargzOptions)
			assert.Equal(t, tc.wantLevel, o.CompressionLevel)
			assert.Equal(t, tc.wantDeflate, o.Deflate)
		})
	}
}
