package stargz

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"hash"
	"io"
	"math/rand"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/internal/imagegen"
)

// layoutCases are tars of every kind of entry the layout writer carries.
func layoutCases() map[string][]byte {
	random := make([]byte, 5<<20)
	rand.New(rand.NewSource(1)).Read(random)
	reg := func(name string, body []byte) imagegen.Entry {
		return imagegen.Entry{Header: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Uid: 1, Uname: "u", Gname: "g"}, Body: body}
	}
	many := []imagegen.Entry{}
	for i := range 300 {
		many = append(many, reg(strings.Repeat("d/", i%5)+"f"+string(rune('a'+i%26)), []byte(strings.Repeat("y", i*37))))
	}
	kinds := []imagegen.Entry{
		{Header: tar.Header{Name: "dir/", Typeflag: tar.TypeDir, Mode: 0o755, Uid: 1000, Uname: "me", ModTime: time.Unix(1700000000, 5e8)}},
		{Header: tar.Header{Name: "dir/x", Typeflag: tar.TypeReg, Mode: 0o600, Uid: 1000, Uname: "me",
			PAXRecords: map[string]string{"SCHILY.xattr.user.a": "1", "SCHILY.xattr.security.capability": "\x01\x02<&>"}}, Body: []byte("xattrs")},
		{Header: tar.Header{Name: "dir/hard", Typeflag: tar.TypeLink, Linkname: "dir/x"}},
		{Header: tar.Header{Name: "dir/sym", Typeflag: tar.TypeSymlink, Linkname: "../elsewhere"}},
		{Header: tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3}},
		{Header: tar.Header{Name: "dev/sda", Typeflag: tar.TypeBlock, Devmajor: 8}},
		{Header: tar.Header{Name: "fifo", Typeflag: tar.TypeFifo}},
		{Header: tar.Header{Name: "dir/.wh.gone", Typeflag: tar.TypeReg}},
		reg(strings.Repeat("long/", 40)+"name", []byte("pax path")),
		reg("ünïcode <html>", []byte("escaped")),
	}
	return map[string][]byte{
		"empty":     imagegen.TarBytes(nil),
		"dirs only": imagegen.TarBytes([]imagegen.Entry{{Header: tar.Header{Name: "a/", Typeflag: tar.TypeDir, Mode: 0o755}}}),
		"kinds":     imagegen.TarBytes(kinds),
		"many":      imagegen.TarBytes(many),
		"chunked": imagegen.TarBytes([]imagegen.Entry{reg("big", random), reg("small", []byte("x")), reg("empty", nil),
			{Header: tar.Header{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "big"}}, reg("text", []byte(strings.Repeat("lazy ", 300000)))}),
		"exact chunk": imagegen.TarBytes([]imagegen.Entry{reg("two", random[:2<<20]), reg("four", random[:4<<20])}),
		"trailing":    append(imagegen.TarBytes([]imagegen.Entry{reg("a", []byte("a"))}), make([]byte, 10240)...),
	}
}

// writeLayout lays out tarball with comp (writing to layout, the compressor
// writes the real output itself when parallel) and returns the TOC digest
// and the closed writer.
func writeLayout(t *testing.T, tarball []byte, comp tocCompressor, layout io.Writer, chunk int) (digest.Digest, *layoutWriter) {
	t.Helper()
	spill, err := newEntrySpill(t.TempDir())
	require.NoError(t, err)
	defer spill.Close()
	w := newLayoutWriter(layout, comp, spill)
	w.SetChunkSize(chunk)
	payload := sha256.New()
	require.NoError(t, w.AppendTarLossLess(io.TeeReader(bytes.NewReader(tarball), payload), nil))
	toc, err := w.Close(payload)
	require.NoError(t, err)
	return toc, w
}

// The layout writer writes what estargz's lossless writer writes with the
// same compressor, byte for byte: zstd:chunked against stargz-snapshotter's
// own compressor, eStargz against estargz's writer with lazyconv's gzip
// compressor. The parallel compressors write the same bytes again.
func TestLayoutMatchesEStargzWriter(t *testing.T) {
	const chunk = 2 << 20
	for name, tarball := range layoutCases() {
		t.Run(name, func(t *testing.T) {
			// eStargz
			var want bytes.Buffer
			ew := estargz.NewWriterWithCompressor(&want, jtocCompressor{newGzipCompressor(newGzipStreams(9, DeflateGo))})
			ew.ChunkSize = chunk
			require.NoError(t, ew.AppendTarLossLess(bytes.NewReader(tarball)))
			wantTOC, err := ew.Close()
			require.NoError(t, err)

			var seq, par bytes.Buffer
			sc := newGzipCompressor(newGzipStreams(9, DeflateGo))
			seqTOC, seqDiff := writeLayout(t, tarball, sc, &seq, chunk)
			pc := newParallelGzip(newGzipStreams(9, DeflateGo), 3, &par)
			parTOC, parDiff := writeLayout(t, tarball, pc, io.Discard, chunk)
			require.Equal(t, wantTOC, seqTOC)
			require.Equal(t, ew.DiffID(), seqDiff.DiffID().String())
			require.True(t, bytes.Equal(want.Bytes(), seq.Bytes()), "eStargz: same bytes as estargz (%d vs %d)", want.Len(), seq.Len())
			require.Equal(t, seqTOC, parTOC)
			require.Equal(t, seqDiff.DiffID(), parDiff.DiffID())
			require.True(t, bytes.Equal(seq.Bytes(), par.Bytes()), "eStargz: parallel writes the same bytes (%d vs %d)", seq.Len(), par.Len())
			require.Equal(t, seqDiff.UncompressedSize(), parDiff.UncompressedSize())
			require.Equal(t, digest.FromBytes(tarball), seqDiff.PayloadDigest(), "the payload is the source tar")
			zr, err := gzip.NewReader(bytes.NewReader(seq.Bytes()))
			require.NoError(t, err)
			whole := digest.SHA256.Digester()
			n, err := io.Copy(whole.Hash(), zr)
			require.NoError(t, err)
			require.Equal(t, seqDiff.UncompressedSize(), n, "the uncompressed size is every byte the blob decompresses to")
			require.Equal(t, seqDiff.DiffID(), whole.Digest(), "and the diffID their digest")

			// zstd:chunked
			want.Reset()
			upstream := &zstdchunked.Compressor{CompressionLevel: zstd.EncoderLevelFromZstd(3), Metadata: map[string]string{}}
			ew = estargz.NewWriterWithCompressor(&want, upstream)
			ew.ChunkSize = chunk
			require.NoError(t, ew.AppendTarLossLess(bytes.NewReader(tarball)))
			wantTOC, err = ew.Close()
			require.NoError(t, err)

			seq.Reset()
			par.Reset()
			zc := &zstdChunkedCompressor{streams: newZstdStreams(3)}
			seqTOC, _ = writeLayout(t, tarball, zc, &seq, chunk)
			pz := newParallelZstdChunked(newZstdStreams(3), 3, &par)
			parTOC, _ = writeLayout(t, tarball, pz, io.Discard, chunk)
			require.Equal(t, wantTOC, seqTOC)
			require.True(t, bytes.Equal(want.Bytes(), seq.Bytes()), "zstd:chunked: same bytes as estargz (%d vs %d)", want.Len(), seq.Len())
			require.Equal(t, upstream.Metadata, zc.Annotations())
			require.Equal(t, seqTOC, parTOC)
			require.True(t, bytes.Equal(seq.Bytes(), par.Bytes()), "zstd:chunked: parallel writes the same bytes")
			require.Equal(t, zc.Annotations(), pz.Annotations())
		})
	}
}

// A run of entries without data is split into streams of bounded size, and
// the layer still reads back whole.
func TestLayoutSplitsLongHeaderRuns(t *testing.T) {
	var entries []imagegen.Entry
	for i := range 20000 { // 20,000 headers: about 10 MB, no data
		entries = append(entries, imagegen.Entry{Header: tar.Header{Name: strings.Repeat("d", 1+i%50) + "/" + strconv.Itoa(i) + "/", Typeflag: tar.TypeDir, Mode: 0o755}})
	}
	tarball := imagegen.TarBytes(entries)
	streams := &countingCompressor{tocCompressor: newGzipCompressor(newGzipStreams(1, DeflateGo))}
	var out bytes.Buffer
	writeLayout(t, tarball, streams, &out, 0)
	require.Greater(t, streams.opened, len(tarball)/(maxHeaderRun+1024), "streams split")

	sr := io.NewSectionReader(bytes.NewReader(out.Bytes()), 0, int64(out.Len()))
	rc, err := estargz.Unpack(sr, new(estargz.GzipDecompressor))
	require.NoError(t, err)
	back, err := io.ReadAll(rc)
	require.NoError(t, err)
	require.Equal(t, digest.FromBytes(tarball), digest.FromBytes(back[:len(tarball)]), "the tar reads back")
	// estargz's reader (stargz-snapshotter's) reads the TOC, a gzip stream
	// of one member (it reads with Multistream(false)).
	r, err := estargz.Open(sr)
	require.NoError(t, err)
	_, ok := r.Lookup(strings.TrimSuffix(entries[19999].Header.Name, "/"))
	require.True(t, ok)
}

type countingCompressor struct {
	tocCompressor
	opened int
}

func (c *countingCompressor) Writer(w io.Writer) (estargz.WriteFlushCloser, error) {
	c.opened++
	return c.tocCompressor.Writer(w)
}

// jtocCompressor is a tocCompressor as an estargz.Compressor, to write with
// estargz's own writer for reference.
type jtocCompressor struct{ tocCompressor }

func (c jtocCompressor) WriteTOCAndFooter(w io.Writer, off int64, toc *estargz.JTOC, diffHash hash.Hash) (digest.Digest, error) {
	return c.tocCompressor.WriteTOCAndFooter(w, off, jtocSource{toc}, diffHash)
}

// Every deflate this build has writes the same bytes sequentially and on
// every core, and the layer unpacks to the source tar.
func TestLayoutDeflates(t *testing.T) {
	deflates := []string{DeflateGo}
	if DefaultDeflate() == DeflateLibdeflate {
		deflates = append(deflates, DeflateLibdeflate)
	}
	for _, deflate := range deflates {
		for name, tarball := range layoutCases() {
			t.Run(deflate+"/"+name, func(t *testing.T) {
				var seq, par bytes.Buffer
				for range 2 { // the pooled buffers and compressors are reused the second time
					seq.Reset()
					par.Reset()
					writeLayout(t, tarball, newGzipCompressor(newGzipStreams(9, deflate)), &seq, 1<<20)
					writeLayout(t, tarball, newParallelGzip(newGzipStreams(9, deflate), 3, &par), io.Discard, 1<<20)
					require.True(t, bytes.Equal(seq.Bytes(), par.Bytes()), "parallel writes the same bytes (%d vs %d)", seq.Len(), par.Len())
				}
				rc, err := estargz.Unpack(io.NewSectionReader(bytes.NewReader(seq.Bytes()), 0, int64(seq.Len())), new(estargz.GzipDecompressor))
				require.NoError(t, err)
				back, err := io.ReadAll(rc)
				require.NoError(t, err)
				require.Equal(t, digest.FromBytes(tarball), digest.FromBytes(back[:min(len(back), len(tarball))]), "unpacks to the source tar")
			})
		}
	}
}

// Stream offsets read back across their pages, and nothing beyond them.
func TestStreamOffsets(t *testing.T) {
	for _, n := range []int64{0, 1, offsetsPage - 1, offsetsPage, offsetsPage + 1, 3*offsetsPage + 7} {
		t.Run(strconv.FormatInt(n, 10), func(t *testing.T) {
			var s streamOffsets
			for i := range n {
				s.add(i * 3)
			}
			for _, i := range []int64{0, n / 2, n - 1, offsetsPage - 1, offsetsPage} {
				off, ok := s.at(i)
				require.Equal(t, i >= 0 && i < n, ok, "index %d of %d", i, n)
				if ok {
					require.Equal(t, i*3, off)
				}
			}
			_, ok := s.at(n)
			require.False(t, ok)
			_, ok = s.at(-1)
			require.False(t, ok)
		})
	}
}
