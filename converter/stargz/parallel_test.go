package stargz

import (
	"archive/tar"
	"bytes"
	"io"
	"math/rand"
	"strings"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/internal/imagegen"
)

// The parallel compressor must write exactly what the sequential one does.
func TestParallelCompressorMatchesSequential(t *testing.T) {
	random := make([]byte, 9<<20)
	rand.New(rand.NewSource(1)).Read(random)
	reg := func(name string, body []byte) imagegen.Entry {
		return imagegen.Entry{Header: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Uid: 1, Uname: "u"}, Body: body}
	}
	cases := map[string][]imagegen.Entry{
		"empty":      {},
		"dirs only":  {{Header: tar.Header{Name: "a/", Typeflag: tar.TypeDir, Mode: 0o755}}},
		"many files": nil,
		"chunked": {reg("big", random), reg("small", []byte("x")), reg("empty", nil),
			{Header: tar.Header{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "big"}}, reg("text", []byte(strings.Repeat("lazy ", 300000)))},
	}
	for i := range 300 {
		cases["many files"] = append(cases["many files"], reg(strings.Repeat("d/", i%5)+"f"+string(rune('a'+i%26)), []byte(strings.Repeat("y", i*37))))
	}
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			tarball := imagegen.TarBytes(entries)
			var seq, par bytes.Buffer
			sc := newGzipCompressor(9)
			ew := estargz.NewWriterWithCompressor(&seq, sc)
			ew.ChunkSize = 2 << 20
			require.NoError(t, ew.AppendTarLossLess(bytes.NewReader(tarball)))
			seqTOC, err := ew.Close()
			require.NoError(t, err)

			pc := newParallelGzip(9, 3, &par)
			ew = estargz.NewWriterWithCompressor(io.Discard, pc)
			ew.ChunkSize = 2 << 20
			require.NoError(t, ew.AppendTarLossLess(bytes.NewReader(tarball)))
			parTOC, err := ew.Close()
			require.NoError(t, err)

			require.Equal(t, seqTOC, parTOC)
			require.True(t, bytes.Equal(seq.Bytes(), par.Bytes()), "same bytes (%d vs %d)", seq.Len(), par.Len())
			require.Equal(t, sc.PayloadDigest(), pc.PayloadDigest())
			require.Equal(t, sc.UncompressedSize(), pc.UncompressedSize())
		})
	}
}

func TestParallelZstdChunkedMatchesSequential(t *testing.T) {
	random := make([]byte, 5<<20)
	rand.New(rand.NewSource(2)).Read(random)
	tarball := imagegen.TarBytes([]imagegen.Entry{
		{Header: tar.Header{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644}, Body: random},
		{Header: tar.Header{Name: "text", Typeflag: tar.TypeReg, Mode: 0o644}, Body: []byte(strings.Repeat("zstd ", 200000))},
	})
	write := func(parallel bool) ([]byte, map[string]string) {
		var out bytes.Buffer
		inner := &zstdchunked.Compressor{CompressionLevel: zstd.EncoderLevelFromZstd(3), Metadata: map[string]string{}}
		var comp tocCompressor = &zstdChunkedCompressor{inner: inner, payloadHash: newPayloadHash()}
		var layout io.Writer = &out
		if parallel {
			comp, layout = newParallelZstdChunked(inner, 3, &out), io.Discard
		}
		ew := estargz.NewWriterWithCompressor(layout, comp)
		ew.ChunkSize = 1 << 20
		require.NoError(t, ew.AppendTarLossLess(bytes.NewReader(tarball)))
		_, err := ew.Close()
		require.NoError(t, err)
		return out.Bytes(), comp.Annotations()
	}
	seq, seqAnn := write(false)
	par, parAnn := write(true)
	require.True(t, bytes.Equal(seq, par), "same bytes (%d vs %d)", len(seq), len(par))
	require.Equal(t, seqAnn, parAnn)
	require.NotEmpty(t, parAnn)
}
