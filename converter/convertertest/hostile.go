package convertertest

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/internal/imagegen"
)

// Hostile is a malformed or hostile image and what converting it must give.
type Hostile struct {
	Name  string
	Image imagegen.Image
	// Class is the errdefs class its conversion must fail with.
	Class func(error) bool
	// Limits, if set, are the limits to convert it under.
	Limits converter.Limits
	// DeleteLayer, if not negative, is a layer whose blob is removed after
	// the image is stored.
	DeleteLayer int
}

// HostileImages is the corpus of hostile and inconsistent images every
// conversion path must refuse with an errdefs class, leaving the store as it
// was: entries escaping the layer root, lying descriptors and configs,
// unknown media types, decompression bombs, documents too large or nested
// too deep, and the classic corruptions. bomb is the size of the bombs'
// payload (tests use a few MiB, the bench hundreds). The document cases are
// refused under the default limits.
func HostileImages(bomb int64) []Hostile {
	good := imagegen.TarBytes([]imagegen.Entry{Dir("etc/"), File("etc/os-release", []byte("ID=hostile\n"))})
	goodLayer := imagegen.Layer{MediaType: ocispec.MediaTypeImageLayerGzip, Blob: imagegen.Compress(good, "gzip")}
	layer := func(entries ...imagegen.Entry) imagegen.Layer {
		return imagegen.Layer{MediaType: ocispec.MediaTypeImageLayerGzip, Blob: imagegen.Compress(imagegen.TarBytes(entries), "gzip")}
	}
	image := func(name string, layers ...imagegen.Layer) imagegen.Image {
		return imagegen.Image{Name: "hostile/" + name + ":v1", Layers: append([]imagegen.Layer{goodLayer}, layers...)}
	}
	withManifest := func(img imagegen.Image, edit func(*ocispec.Manifest)) imagegen.Image {
		img.EditManifest = edit
		return img
	}
	withConfig := func(img imagegen.Image, edit func(*ocispec.Image)) imagegen.Image {
		img.EditConfig = edit
		return img
	}
	gz := imagegen.Compress(good, "gzip")
	corrupt := append([]byte(nil), gz...)
	for i := 20; i < len(corrupt)-20; i += 7 {
		corrupt[i] ^= 0x5a
	}
	badCRC := append([]byte(nil), gz...)
	badCRC[len(badCRC)-8] ^= 0xff
	raw := func(mediaType string, blob []byte) imagegen.Layer {
		return imagegen.Layer{MediaType: mediaType, Blob: blob, DiffID: digest.FromBytes(blob)}
	}
	invalid, notFound := errdefs.IsInvalidArgument, errdefs.IsNotFound
	zstdBomb, zstdBombDiffID := ZstdWindowBomb(bomb, 512<<20)
	pad := strings.Repeat("x", converter.DefaultMaxDocumentBytes)
	return []Hostile{
		{Name: "traversal entry", Image: image("traversal", layer(File("../../escape.txt", []byte("out")))), Class: invalid, DeleteLayer: -1},
		{Name: "nested traversal entry", Image: image("nested", layer(File("a/../../b", []byte("out")))), Class: invalid, DeleteLayer: -1},
		{Name: "absolute entry", Image: image("absolute", layer(File("/etc/passwd-evil", []byte("root::0:0")))), Class: invalid, DeleteLayer: -1},
		{Name: "hard link escaping the root", Image: image("hardlink", layer(File("x", []byte("x")),
			imagegen.Entry{Header: tar.Header{Name: "shadow", Typeflag: tar.TypeLink, Linkname: "../../../../etc/shadow", ModTime: Epoch}})),
			Class: invalid, DeleteLayer: -1},
		{Name: "descriptor size lies", Image: withManifest(image("sizelie"), func(m *ocispec.Manifest) { m.Layers[0].Size += 100 }),
			Class: invalid, DeleteLayer: -1},
		{Name: "diff_ids[0] lies", Image: withConfig(image("diffidlie"), func(c *ocispec.Image) { c.RootFS.DiffIDs[0] = digest.FromString("lie") }),
			Class: invalid, DeleteLayer: -1},
		{Name: "diff_id count mismatch", Image: withConfig(image("diffidcount", layer(File("y", []byte("y")))), func(c *ocispec.Image) {
			c.RootFS.DiffIDs = c.RootFS.DiffIDs[:1]
		}), Class: invalid, DeleteLayer: -1},
		{Name: "unknown layer media type", Image: withManifest(image("unknowntype", layer(File("z", []byte("z")))), func(m *ocispec.Manifest) {
			m.Layers[1].MediaType = "application/vnd.example.unknown+gzip"
		}), Class: invalid, DeleteLayer: -1},
		{Name: "config is not JSON", Image: func() imagegen.Image { img := image("notjson"); img.RawConfig = []byte("not json"); return img }(),
			Class: invalid, DeleteLayer: -1},
		{Name: "missing blob", Image: image("missing", layer(File("m", []byte("m")))), Class: notFound, DeleteLayer: 1},
		{Name: "corrupt gzip", Image: image("corrupt", raw(ocispec.MediaTypeImageLayerGzip, corrupt)), Class: invalid, DeleteLayer: -1},
		{Name: "bad gzip CRC", Image: image("crc", raw(ocispec.MediaTypeImageLayerGzip, badCRC)), Class: invalid, DeleteLayer: -1},
		{Name: "truncated gzip", Image: image("truncated", raw(ocispec.MediaTypeImageLayerGzip, gz[:len(gz)/2])), Class: invalid, DeleteLayer: -1},
		{Name: "plain data under a gzip type", Image: image("plain", raw(ocispec.MediaTypeImageLayerGzip, good)), Class: invalid, DeleteLayer: -1},
		{Name: "gzip of no tar", Image: image("notar", raw(ocispec.MediaTypeImageLayerGzip, imagegen.Compress(RandomBytes(9, 4096), "gzip"))),
			Class: invalid, DeleteLayer: -1},
		{Name: "zstd type over gzip data", Image: image("zstdgzip", raw(ocispec.MediaTypeImageLayerZstd, gz)), Class: invalid, DeleteLayer: -1},
		{Name: "stargz.index.json inside", Image: image("tocinside", layer(File("stargz.index.json", []byte(`{"version":1,"entries":[]}`)))),
			Class: invalid, DeleteLayer: -1},
		{Name: "data after the end of archive", Image: image("trailing", raw(ocispec.MediaTypeImageLayerGzip, TrailingBomb(good, bomb))),
			Class: invalid, DeleteLayer: -1},
		{Name: "TOC bomb", Image: image("tocbomb", raw(ocispec.MediaTypeImageLayerGzip, TOCBomb(bomb))), Class: invalid,
			Limits: converter.Limits{MaxTOCBytes: bomb / 2}, DeleteLayer: -1},
		{Name: "entries beyond the limit", Image: image("entries", layer(manyFiles(200)...)), Class: invalid,
			Limits: converter.Limits{MaxEntries: 100}, DeleteLayer: -1},
		{Name: "sparse expansion beyond the limit", Image: image("sparse", raw(ocispec.MediaTypeImageLayerGzip, imagegen.Compress(SparseTar(bomb), "gzip"))),
			Class: invalid, Limits: converter.Limits{MaxExpandedBytes: bomb / 2}, DeleteLayer: -1},
		{Name: "zstd window beyond the limit", Image: image("zstdwindow",
			imagegen.Layer{MediaType: ocispec.MediaTypeImageLayerZstd, Blob: zstdBomb, DiffID: zstdBombDiffID}), Class: invalid, DeleteLayer: -1},
		{Name: "config beyond the document limit", Image: withConfig(image("bigconfig"), func(c *ocispec.Image) {
			c.Config.Labels = map[string]string{"pad": pad}
		}), Class: invalid, DeleteLayer: -1},
		{Name: "index beyond the document limit", Image: func() imagegen.Image {
			img := image("bigindex")
			img.Indexes = 1
			img.EditIndex = func(_ int, index *ocispec.Index) { index.Annotations = map[string]string{"pad": pad} }
			return img
		}(), Class: invalid, DeleteLayer: -1},
		{Name: "indexes nested beyond the limit", Image: func() imagegen.Image {
			img := image("deepindex")
			img.Indexes = converter.DefaultMaxIndexDepth + 1
			return img
		}(), Class: invalid, DeleteLayer: -1},
	}
}

// ZstdWindowBomb is a zstd layer of one file of n zero bytes whose frame
// declares a window of window bytes (a power of two from 1 KiB), as
// `zstd --long=29` declares 512 MiB, and its diffID. Its blocks refer back
// no further than the encoder's 8 MiB, so a decoder that accepts the window
// decodes it, holding up to window bytes of history: a few KiB of layer for
// every MiB of it.
func ZstdWindowBomb(n int64, window uint64) ([]byte, digest.Digest) {
	var b bytes.Buffer
	zw, _ := imagegen.Compressor(&b, "zstd")
	tarDigest := digest.SHA256.Digester()
	tw := tar.NewWriter(io.MultiWriter(zw, tarDigest.Hash()))
	_ = tw.WriteHeader(&tar.Header{Name: "zeros", Typeflag: tar.TypeReg, Size: n, Mode: 0o644, ModTime: Epoch})
	zeros(tw, n)
	_ = tw.Close()
	_ = zw.Close()
	return DeclareZstdWindow(b.Bytes(), window), tarDigest.Digest()
}

// DeclareZstdWindow rewrites the window descriptor of the zstd frame at the
// start of blob (one with a window descriptor, as streaming encoders write)
// to declare window bytes (a power of two from 1 KiB to 2 TiB), in place.
func DeclareZstdWindow(blob []byte, window uint64) []byte {
	if len(blob) < 6 || !bytes.HasPrefix(blob, []byte{0x28, 0xb5, 0x2f, 0xfd}) || blob[4]&(1<<5) != 0 ||
		window < 1<<10 || window > 1<<41 || window&(window-1) != 0 {
		panic("DeclareZstdWindow: no zstd frame with a window descriptor, or a window that is no power of two from 1 KiB to 2 TiB")
	}
	blob[5] = byte(bits.Len64(window-1)-10) << 3
	return blob
}

func manyFiles(n int) []imagegen.Entry {
	out := make([]imagegen.Entry, n)
	for i := range out {
		out[i] = File(fmt.Sprintf("f%05d", i), nil)
	}
	return out
}

// zeros writes n zero bytes to w without holding them.
func zeros(w io.Writer, n int64) {
	buf := make([]byte, 1<<20)
	for n > 0 {
		k := min(n, int64(len(buf)))
		_, _ = w.Write(buf[:k])
		n -= k
	}
}

// TrailingBomb is a gzip'd tar followed, after its end-of-archive marker, by
// n zero bytes: a few hundred KiB that inflate to n.
func TrailingBomb(tarball []byte, n int64) []byte {
	var b bytes.Buffer
	w, _ := imagegen.Compressor(&b, "gzip")
	_, _ = w.Write(tarball)
	zeros(w, n)
	_ = w.Close()
	return b.Bytes()
}

// TOCBomb is a gzip layer with an eStargz footer pointing at a "TOC" tar
// entry that inflates to n bytes.
func TOCBomb(n int64) []byte {
	var b bytes.Buffer
	first, _ := imagegen.Compressor(&b, "gzip")
	tw := tar.NewWriter(first)
	_ = tw.WriteHeader(&tar.Header{Name: "a", Typeflag: tar.TypeReg, Size: 1, Mode: 0o644, ModTime: Epoch})
	_, _ = tw.Write([]byte("a"))
	_ = tw.Flush()
	_ = first.Close()
	tocOffset := int64(b.Len())
	second, _ := imagegen.Compressor(&b, "gzip")
	tw = tar.NewWriter(second)
	_ = tw.WriteHeader(&tar.Header{Name: estargz.TOCTarName, Typeflag: tar.TypeReg, Size: n, Mode: 0o644, ModTime: Epoch})
	zeros(tw, n)
	_ = tw.Close()
	_ = second.Close()
	subfield := fmt.Sprintf("%016xSTARGZ", tocOffset)
	extra := []byte{'S', 'G', 0, 0}
	binary.LittleEndian.PutUint16(extra[2:], uint16(len(subfield)))
	b.Write(estargz.CreateGzipFooter(append(extra, subfield...)))
	return b.Bytes()
}

// SparseTar is a tar holding one old-GNU sparse file of logical size n with
// 512 bytes of data at its start and a hole after (Go's tar writer cannot
// write sparse files, so the header is patched by hand).
func SparseTar(n int64) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	_ = tw.WriteHeader(&tar.Header{Name: "sparse", Typeflag: tar.TypeReg, Mode: 0o644, Size: 512, Format: tar.FormatGNU, ModTime: Epoch})
	_, _ = tw.Write(bytes.Repeat([]byte("x"), 512))
	_ = tw.Close()
	raw := b.Bytes()
	h := raw[:512]
	h[156] = tar.TypeGNUSparse
	octal := func(off, size int, v int64) { copy(h[off:off+size], fmt.Sprintf("%0*o\x00", size-1, v)) }
	octal(386, 12, 0)   // sparse[0].offset
	octal(398, 12, 512) // sparse[0].numbytes
	octal(410, 12, n)   // sparse[1].offset: the end
	octal(422, 12, 0)   // sparse[1].numbytes
	h[482] = 0          // not extended
	octal(483, 12, n)   // realsize
	for i := 148; i < 156; i++ {
		h[i] = ' '
	}
	var sum int64
	for _, c := range h {
		sum += int64(c)
	}
	copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return raw
}
