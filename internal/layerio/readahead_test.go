package layerio

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The read-ahead yields its source's bytes in order, then its error, and
// hashes exactly what it yields.
func TestReadAhead(t *testing.T) {
	data := make([]byte, 3*aheadBufferSize+12345)
	for i := range data {
		data[i] = byte(rand.IntN(256))
	}
	broken := errors.New("corrupt input")
	for _, tc := range []struct {
		name string
		src  io.Reader
		want []byte
		err  error
	}{
		{"whole", bytes.NewReader(data), data, nil},
		{"one byte at a time", iotest.OneByteReader(bytes.NewReader(data[:5000])), data[:5000], nil},
		{"empty", bytes.NewReader(nil), nil, nil},
		{"exact buffers", bytes.NewReader(data[:2*aheadBufferSize]), data[:2*aheadBufferSize], nil},
		{"error after data", io.MultiReader(bytes.NewReader(data[:aheadBufferSize+7]), iotest.ErrReader(broken)), data[:aheadBufferSize+7], broken},
		{"data with the error", iotest.DataErrReader(bytes.NewReader(data[:100])), data[:100], nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := sha256.New()
			ra := newReadAhead(tc.src, h)
			got, err := io.ReadAll(iotest.HalfReader(ra))
			if tc.err != nil {
				require.ErrorIs(t, err, tc.err)
			} else {
				require.NoError(t, err)
			}
			assert.Equal(t, len(tc.want), len(got))
			assert.True(t, bytes.Equal(tc.want, got))
			want := sha256.Sum256(tc.want)
			assert.Equal(t, want[:], h.Sum(nil))
		})
	}
}

// Stopping a read-ahead midway ends its goroutine, however far ahead it is.
func TestReadAheadStops(t *testing.T) {
	ra := newReadAhead(bytes.NewReader(make([]byte, 64*aheadBufferSize)), sha256.New())
	p := make([]byte, 10)
	_, err := ra.Read(p)
	require.NoError(t, err)
	close(ra.stop)
	<-ra.done
}
