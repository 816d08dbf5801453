package converter_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"math/rand"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/internal/imagegen"
	"github.com/lazyconv/lazyconv/labels"
)

var epoch = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

func dir(name string) imagegen.Entry {
	return imagegen.Entry{Header: tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: epoch}}
}

func file(name string, body []byte) imagegen.Entry {
	return imagegen.Entry{Header: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, ModTime: epoch, Uid: 1000, Gid: 1000, Uname: "user", Gname: "group"}, Body: body}
}

func randomBytes(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

// losslessCases are the layers the lossless round trip must carry byte for byte.
func losslessCases() map[string][]imagegen.Entry {
	text := bytes.Repeat([]byte("lazy pulling makes containers start fast\n"), 2000)
	large := append(randomBytes(1, 9<<20), make([]byte, 3<<20)...) // 12 MiB, several chunks, a hole-like tail
	sparse := make([]byte, 10<<20)                                 // a sparse file on disk is zeros in a tar
	copy(sparse[5<<20:], "middle")
	return map[string][]imagegen.Entry{
		"regular files and dirs":    {dir("etc/"), file("etc/hosts", []byte("127.0.0.1 localhost\n")), file("etc/text", text)},
		"empty dirs and empty file": {dir("empty/"), dir("empty/nested/"), file("zero", nil)},
		"hard links": {dir("bin/"), file("bin/busybox", text),
			{Header: tar.Header{Name: "bin/sh", Typeflag: tar.TypeLink, Linkname: "bin/busybox", ModTime: epoch}}},
		"symlinks": {file("target", []byte("x")),
			{Header: tar.Header{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "target", ModTime: epoch}},
			{Header: tar.Header{Name: "dangling", Typeflag: tar.TypeSymlink, Linkname: "/nowhere/at/all", ModTime: epoch}}},
		"xattrs": {{Header: tar.Header{Name: "caps", Typeflag: tar.TypeReg, Mode: 0o755, ModTime: epoch, Size: 3, Format: tar.FormatPAX,
			PAXRecords: map[string]string{"SCHILY.xattr.security.capability": "\x01\x00\x00\x02", "SCHILY.xattr.user.note": "hello"}}, Body: []byte("cap")}},
		"large file":          {file("large.bin", large)},
		"sparse-on-disk file": {file("sparse.img", sparse)},
		"long names": {dir(strings.Repeat("d", 120) + "/"), file(strings.Repeat("d", 120)+"/"+strings.Repeat("f", 150), []byte("long")),
			{Header: tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Linkname: strings.Repeat("t", 200), ModTime: epoch}}},
		"devices": {dir("dev/"),
			{Header: tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: epoch}},
			{Header: tar.Header{Name: "dev/sda", Typeflag: tar.TypeBlock, Mode: 0o660, Devmajor: 8, Devminor: 0, ModTime: epoch}},
			{Header: tar.Header{Name: "dev/fifo", Typeflag: tar.TypeFifo, Mode: 0o600, ModTime: epoch}}},
		"PAX headers": {{Header: tar.Header{Name: "pax", Typeflag: tar.TypeReg, Mode: 0o600, Size: 2, Format: tar.FormatPAX,
			ModTime: time.Unix(1700000000, 123456789), AccessTime: time.Unix(1700000001, 5), Uid: 1 << 22, Uname: strings.Repeat("u", 40),
			PAXRecords: map[string]string{"LIBARCHIVE.creationtime": "1700000000", "comment": "kept as is"}}, Body: []byte("ok")}},
		"GNU format": {{Header: tar.Header{Name: "gnu", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1, Format: tar.FormatGNU,
			ModTime: epoch, AccessTime: epoch, ChangeTime: epoch}, Body: []byte("g")}},
		"empty layer": {},
	}
}

func TestEStargzLosslessRoundTrip(t *testing.T) {
	f := newFixture(t)
	conv, err := converter.NewEStargz(converter.WithEStargzChunkSize(1 << 20))
	require.NoError(t, err)
	for name, entries := range losslessCases() {
		for _, comp := range []string{"gzip", "zstd", ""} {
			t.Run(name+"/"+comp, func(t *testing.T) {
				tarball := imagegen.TarBytes(entries)
				src := putLayer(t, f, tarball, comp)
				res, err := f.conv.ConvertLayer(f.ctx, conv, src, nil)
				require.NoError(t, err)
				require.Equal(t, converter.StateCommitted, res.State)
				assert.Equal(t, ocispec.MediaTypeImageLayerGzip, res.Desc.MediaType)
				assertEStargzOf(t, f.cs, res.Desc, tarball)
				info, err := f.cs.Info(f.ctx, res.Desc.Digest)
				require.NoError(t, err)
				assert.Equal(t, res.DiffID.String(), info.Labels[labels.Uncompressed])
				assert.Empty(t, labels.DistributionSources(info), "no labels copied from the source")
			})
		}
	}
}

// putLayer stores a tar as an OCI layer with the given compression.
func putLayer(t testing.TB, f *fixture, tarball []byte, comp string) ocispec.Descriptor {
	t.Helper()
	blob := imagegen.Compress(tarball, comp)
	mt := ocispec.MediaTypeImageLayer
	if comp != "" {
		mt += "+" + comp
	}
	return putBlob(t, f, blob, mt, map[string]string{labels.DistributionSourcePrefix + "example.com": "library/src"})
}

func putBlob(t testing.TB, f *fixture, blob []byte, mediaType string, lbls map[string]string) ocispec.Descriptor {
	t.Helper()
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	require.NoError(t, content.WriteBlob(f.ctx, f.cs, "test-"+desc.Digest.String(), bytes.NewReader(blob), desc, content.WithLabels(lbls)))
	return desc
}

// assertEStargzOf checks that desc is eStargz whose unpacked tar is exactly
// tarball, whose TOC verifies against its annotation, and whose every file
// reads back as in the source.
func assertEStargzOf(t *testing.T, cs content.Provider, desc ocispec.Descriptor, tarball []byte) {
	t.Helper()
	ctx := t.Context()
	ctx = namespacesCtx(ctx)
	ra, err := cs.ReaderAt(ctx, desc)
	require.NoError(t, err)
	defer ra.Close()
	sr := io.NewSectionReader(ra, 0, ra.Size())
	rc, err := estargz.Unpack(sr, new(estargz.GzipDecompressor))
	require.NoError(t, err)
	unpacked, err := io.ReadAll(rc)
	require.NoError(t, err)
	require.True(t, bytes.Equal(tarball, unpacked), "estargz.Unpack must yield the source tar byte for byte (%d vs %d bytes)", len(tarball), len(unpacked))

	// The uncompressed-size annotation is the size of the whole blob decompressed.
	zr, err := gzip.NewReader(io.NewSectionReader(ra, 0, ra.Size()))
	require.NoError(t, err)
	total, err := io.Copy(io.Discard, zr)
	require.NoError(t, err)
	assert.Equal(t, strconv.FormatInt(total, 10), desc.Annotations[labels.UncompressedSizeAnnotation])

	r, err := estargz.Open(sr)
	require.NoError(t, err)
	tocDigest, err := digest.Parse(desc.Annotations[labels.TOCDigestAnnotation])
	require.NoError(t, err)
	_, err = r.VerifyTOC(tocDigest)
	require.NoError(t, err)

	tr := tar.NewReader(bytes.NewReader(tarball))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		if h.Typeflag != tar.TypeReg {
			continue
		}
		want, err := io.ReadAll(tr)
		require.NoError(t, err)
		fr, err := r.OpenFile(h.Name)
		require.NoError(t, err, h.Name)
		got := make([]byte, fr.Size())
		_, err = fr.ReadAt(got, 0) // one read: estargz decompresses a chunk from its start per read
		if err == io.EOF {
			err = nil
		}
		require.NoError(t, err)
		assert.True(t, bytes.Equal(want, got), "content of %s", h.Name)
	}
}

func TestEStargzKeepsEStargzLayers(t *testing.T) {
	f := newFixture(t)
	conv, err := converter.NewEStargz()
	require.NoError(t, err)
	tarball := imagegen.TarBytes(losslessCases()["symlinks"])
	first, err := f.conv.ConvertLayer(f.ctx, conv, putLayer(t, f, tarball, "gzip"), nil)
	require.NoError(t, err)

	again := first.Desc
	again.Annotations = nil // as a registry that dropped annotations would give it
	res, err := f.conv.ConvertLayer(f.ctx, conv, again, nil)
	require.NoError(t, err)
	assert.Equal(t, converter.StateKept, res.State)
	assert.Equal(t, first.Desc.Digest, res.Desc.Digest)
	assert.Equal(t, first.Desc.Annotations[labels.TOCDigestAnnotation], res.Desc.Annotations[labels.TOCDigestAnnotation])
	require.NoError(t, f.conv.Link(f.ctx, res))
	is, err := converter.IsEStargz(f.ctx, f.cs, first.Desc.Digest)
	require.NoError(t, err)
	assert.True(t, is)
}

func TestEStargzVariantNames(t *testing.T) {
	for _, tc := range []struct {
		opts []converter.EStargzOption
		want string
	}{
		{nil, "estargz"},
		{[]converter.EStargzOption{converter.WithEStargzCompressionLevel(6)}, "estargz.level-6"},
		{[]converter.EStargzOption{converter.WithEStargzChunkSize(1024), converter.WithEStargzCompressionLevel(1)}, "estargz.chunk-1024.level-1"},
	} {
		c, err := converter.NewEStargz(tc.opts...)
		require.NoError(t, err)
		assert.Equal(t, tc.want, c.Variant())
	}
	_, err := converter.NewEStargz(converter.WithEStargzCompressionLevel(12))
	require.Error(t, err)
	_, err = converter.NewEStargz(converter.WithEStargzChunkSize(-1))
	require.Error(t, err)
}
