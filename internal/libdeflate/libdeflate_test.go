package libdeflate

import (
	"bytes"
	"compress/gzip"
	"io"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/stretchr/testify/require"
)

func TestGzip(t *testing.T) {
	if !Available {
		_, err := New(9)
		require.ErrorIs(t, err, errdefs.ErrUnavailable)
		t.Skip("built without libdeflate (the libdeflate tag and cgo): only its absence is checked")
	}
	text := []byte(strings.Repeat("lazy conversion of layers ", 10000))
	for _, tc := range []struct {
		name  string
		level int
		in    []byte
	}{
		{"empty", 6, nil},
		{"stored", 0, text},
		{"level 9", 9, text},
		{"level 12", 12, text},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(tc.level)
			require.NoError(t, err)
			prefix := []byte("kept")
			out := c.AppendGzip(bytes.Clone(prefix), tc.in)
			require.Equal(t, prefix, out[:len(prefix)])
			zr, err := gzip.NewReader(bytes.NewReader(out[len(prefix):]))
			require.NoError(t, err)
			back, err := io.ReadAll(zr)
			require.NoError(t, err)
			require.Equal(t, len(tc.in), len(back))
			require.True(t, bytes.Equal(tc.in, back))
			again := c.AppendGzip(nil, tc.in)
			require.Equal(t, out[len(prefix):], again, "deterministic")
		})
	}
	_, err := New(13)
	require.ErrorIs(t, err, errdefs.ErrInvalidArgument)
}
