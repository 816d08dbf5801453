package convertertest

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"math/rand"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/internal/imagegen"
)

// Epoch is the modification time of every corpus entry.
var Epoch = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

// Dir is a directory entry.
func Dir(name string) imagegen.Entry {
	return imagegen.Entry{Header: tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: Epoch}}
}

// File is a regular file entry owned by user 1000.
func File(name string, body []byte) imagegen.Entry {
	return imagegen.Entry{Header: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, ModTime: Epoch, Uid: 1000, Gid: 1000, Uname: "user", Gname: "group"}, Body: body}
}

// RandomBytes returns n bytes from a seeded generator (incompressible, reproducible).
func RandomBytes(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

// Cases are layers a lossless conversion must carry byte for byte, by name:
// every entry type, PAX and GNU headers, xattrs, long names, large and
// hole-like files.
func Cases() map[string][]imagegen.Entry {
	text := bytes.Repeat([]byte("lazy pulling makes containers start fast\n"), 2000)
	large := append(RandomBytes(1, 9<<20), make([]byte, 3<<20)...) // 12 MiB, several chunks, a hole-like tail
	sparse := make([]byte, 10<<20)                                 // a sparse file on disk is zeros in a tar
	copy(sparse[5<<20:], "middle")
	return map[string][]imagegen.Entry{
		"regular files and dirs":    {Dir("etc/"), File("etc/hosts", []byte("127.0.0.1 localhost\n")), File("etc/text", text)},
		"empty dirs and empty file": {Dir("empty/"), Dir("empty/nested/"), File("zero", nil)},
		"hard links": {Dir("bin/"), File("bin/busybox", text),
			{Header: tar.Header{Name: "bin/sh", Typeflag: tar.TypeLink, Linkname: "bin/busybox", ModTime: Epoch}}},
		"symlinks": {File("target", []byte("x")),
			{Header: tar.Header{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "target", ModTime: Epoch}},
			{Header: tar.Header{Name: "dangling", Typeflag: tar.TypeSymlink, Linkname: "/nowhere/at/all", ModTime: Epoch}}},
		"xattrs": {{Header: tar.Header{Name: "caps", Typeflag: tar.TypeReg, Mode: 0o755, ModTime: Epoch, Size: 3, Format: tar.FormatPAX,
			PAXRecords: map[string]string{"SCHILY.xattr.security.capability": "\x01\x00\x00\x02", "SCHILY.xattr.user.note": "hello"}}, Body: []byte("cap")}},
		"large file":          {File("large.bin", large)},
		"sparse-on-disk file": {File("sparse.img", sparse)},
		"long names": {Dir(strings.Repeat("d", 120) + "/"), File(strings.Repeat("d", 120)+"/"+strings.Repeat("f", 150), []byte("long")),
			{Header: tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Linkname: strings.Repeat("t", 200), ModTime: Epoch}}},
		"devices": {Dir("dev/"),
			{Header: tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: Epoch}},
			{Header: tar.Header{Name: "dev/sda", Typeflag: tar.TypeBlock, Mode: 0o660, Devmajor: 8, Devminor: 0, ModTime: Epoch}},
			{Header: tar.Header{Name: "dev/fifo", Typeflag: tar.TypeFifo, Mode: 0o600, ModTime: Epoch}}},
		"PAX headers": {{Header: tar.Header{Name: "pax", Typeflag: tar.TypeReg, Mode: 0o600, Size: 2, Format: tar.FormatPAX,
			ModTime: time.Unix(1700000000, 123456789), AccessTime: time.Unix(1700000001, 5), Uid: 1 << 22, Uname: strings.Repeat("u", 40),
			PAXRecords: map[string]string{"LIBARCHIVE.creationtime": "1700000000", "comment": "kept as is"}}, Body: []byte("ok")}},
		"GNU format": {{Header: tar.Header{Name: "gnu", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1, Format: tar.FormatGNU,
			ModTime: Epoch, AccessTime: Epoch, ChangeTime: Epoch}, Body: []byte("g")}},
		"empty layer": {},
	}
}

// TestImage stores a three-layer image (gzip, zstd and uncompressed layers
// from Cases) under name; with docker, Docker media types.
func (f *Fixture) TestImage(t testing.TB, name string, docker bool) ocispec.Descriptor {
	t.Helper()
	cases := Cases()
	var layers []imagegen.Layer
	for i, tc := range []struct {
		entries string
		comp    string
	}{{"regular files and dirs", "gzip"}, {"large file", "zstd"}, {"symlinks", ""}} {
		mt := ocispec.MediaTypeImageLayer
		if tc.comp != "" {
			mt += "+" + tc.comp
		}
		if docker && i == 0 {
			mt = images.MediaTypeDockerSchema2LayerGzip
		}
		layers = append(layers, imagegen.Layer{MediaType: mt, Blob: imagegen.Compress(imagegen.TarBytes(cases[tc.entries]), tc.comp)})
	}
	desc, err := imagegen.Store(f.Ctx, f.CS, f.Store.ImageStore(), imagegen.Image{Name: name, Layers: layers, Docker: docker})
	require.NoError(t, err)
	return desc
}

// ReadJSON reads a JSON blob (manifest, index, config) from the fixture's store.
func ReadJSON[T any](t testing.TB, f *Fixture, desc ocispec.Descriptor) T {
	t.Helper()
	b, err := content.ReadBlob(f.Ctx, f.CS, desc)
	require.NoError(t, err)
	var v T
	require.NoError(t, json.Unmarshal(b, &v))
	return v
}

// RegularFiles maps every regular file of a tar to its content's digest,
// sparse files expanded and hard links resolved (which name of a hard-linked
// set holds the data depends on the tool that wrote the tar), leaving out
// eStargz's own entries (TOC, landmarks): what a layer's files are,
// whatever its bytes.
func RegularFiles(t testing.TB, r io.Reader) map[string]digest.Digest {
	t.Helper()
	out := map[string]digest.Digest{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		require.NoError(t, err)
		name := strings.TrimPrefix(h.Name, "./")
		switch name {
		case estargz.TOCTarName, estargz.PrefetchLandmark, estargz.NoPrefetchLandmark:
			continue
		}
		switch h.Typeflag {
		case tar.TypeReg, tar.TypeGNUSparse:
			d, err := digest.FromReader(tr)
			require.NoError(t, err)
			out[name] = d
		case tar.TypeLink:
			out[name] = out[strings.TrimPrefix(h.Linkname, "./")]
		}
	}
}
