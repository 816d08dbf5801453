package stargz_test

import (
	"archive/tar"
	"bytes"
	"fmt"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/converter/stargz"
	"github.com/lazyconv/lazyconv/internal/imagegen"
)

// gnuSparseTar returns a tar holding one old-GNU sparse file ('S'): 1 MiB
// long, with 512 bytes of data at 512 KiB and holes elsewhere. Go's tar writer
// cannot write sparse files, so the header is patched by hand.
func gnuSparseTar(t *testing.T) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	data := bytes.Repeat([]byte("x"), 512)
	require.NoError(t, tw.WriteHeader(&tar.Header{Name: "sparse", Typeflag: tar.TypeReg, Mode: 0o644, Size: 512, Format: tar.FormatGNU, ModTime: convertertest.Epoch}))
	_, err := tw.Write(data)
	require.NoError(t, err)
	require.NoError(t, tw.Close())
	raw := b.Bytes()
	h := raw[:512]
	h[156] = 'S'
	octal := func(off, size int, v int64) { copy(h[off:off+size], fmt.Sprintf("%0*o\x00", size-1, v)) }
	octal(386, 12, 512<<10) // sparse[0].offset
	octal(398, 12, 512)     // sparse[0].numbytes
	octal(410, 12, 1<<20)   // sparse[1].offset: the end
	octal(422, 12, 0)       // sparse[1].numbytes
	h[482] = 0              // not extended
	octal(483, 12, 1<<20)   // realsize
	for i := 148; i < 156; i++ {
		h[i] = ' '
	}
	var sum int64
	for _, c := range h {
		sum += int64(c)
	}
	copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
	// The stdlib reader sees a 1 MiB sparse file.
	tr := tar.NewReader(bytes.NewReader(raw))
	hdr, err := tr.Next()
	require.NoError(t, err)
	require.Equal(t, int64(1<<20), hdr.Size)
	return raw
}

func TestSparseEntryIsRefusedNotRewritten(t *testing.T) {
	f := convertertest.NewFixture(t)
	conv, err := stargz.NewEStargz(stargz.DefaultEStargzOptions())
	require.NoError(t, err)
	desc := putLayer(t, f, gnuSparseTar(t), "gzip")
	before := f.ContentState(t)
	_, err = f.Conv.ConvertLayer(f.Ctx, conv, desc, nil)
	require.Error(t, err)
	assert.True(t, errdefs.IsInvalidArgument(err), "%v", err)
	t.Log(err)
	assert.Equal(t, before, f.ContentState(t))

	// The same file, written out in full (as a sparse file on disk is), converts losslessly.
	full := make([]byte, 1<<20)
	copy(full[512<<10:], bytes.Repeat([]byte("x"), 512))
	tarball := imagegen.TarBytes([]imagegen.Entry{convertertest.File("sparse", full)})
	res, err := f.Conv.ConvertLayer(f.Ctx, conv, putLayer(t, f, tarball, "gzip"), nil)
	require.NoError(t, err)
	assertEStargzOf(t, f.CS, res.Desc, tarball)
}
