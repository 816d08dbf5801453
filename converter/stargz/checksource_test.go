package stargz_test

import (
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/converter/stargz"
	"github.com/lazyconv/lazyconv/internal/imagegen"
	"github.com/lazyconv/lazyconv/labels"
)

// Every layer lazyconv writes losslessly checks out against its source, and
// the check recomputes the diffID and annotations the conversion recorded.
func TestCheckSourceAcceptsHonestLayers(t *testing.T) {
	f := convertertest.NewFixture(t)
	esgz, err := stargz.NewEStargz(stargz.EStargzOptions{CompressionLevel: 1, ChunkSize: 1 << 20})
	require.NoError(t, err)
	zc, err := stargz.NewZstdChunked(stargz.ZstdChunkedOptions{CompressionLevel: 1, ChunkSize: 1 << 20})
	require.NoError(t, err)
	for name, entries := range convertertest.Cases() {
		if name == "sparse-on-disk file" {
			continue // zeros in a tar: covered, but slow under -race with nothing new
		}
		for _, tc := range []struct {
			lc   converter.LayerConverter
			comp converter.Compression
		}{{esgz, converter.Gzip}, {zc, converter.Zstd}} {
			t.Run(name+"/"+tc.lc.Variant(), func(t *testing.T) {
				tarball := imagegen.TarBytes(entries)
				src := putLayer(t, f, tarball, "gzip")
				res, err := f.Conv.ConvertLayer(f.Ctx, tc.lc, src, nil)
				require.NoError(t, err)
				v, err := stargz.CheckSource(f.Ctx, f.CS, res.Desc, tc.comp, digest.FromBytes(tarball))
				require.NoError(t, err)
				assert.Equal(t, res.DiffID, v.DiffID)
				assert.Equal(t, res.Desc.Annotations, v.Annotations)

				_, err = stargz.CheckSource(f.Ctx, f.CS, res.Desc, tc.comp, digest.FromString("another tar"))
				assert.True(t, errdefs.IsInvalidArgument(err), "%v", err)
				assert.ErrorContains(t, err, "not the source's")
			})
		}
	}
}

// A zstd:chunked layer whose TOC was rewritten (and its annotations with
// it, as a consistent attacker would) keeps its source's diffID: only the
// TOC check sees that the files a lazy snapshotter would build differ.
func TestCheckSourceRefusesADoctoredZstdChunkedTOC(t *testing.T) {
	f := convertertest.NewFixture(t)
	zc, err := stargz.NewZstdChunked(stargz.ZstdChunkedOptions{CompressionLevel: 1})
	require.NoError(t, err)
	tarball := imagegen.TarBytes(convertertest.Cases()["regular files and dirs"])
	res, err := f.Conv.ConvertLayer(f.Ctx, zc, putLayer(t, f, tarball, "gzip"), nil)
	require.NoError(t, err)
	blob, err := content.ReadBlob(f.Ctx, f.CS, res.Desc)
	require.NoError(t, err)
	for _, tc := range []struct {
		name string
		edit func(toc *estargz.JTOC)
		want string
	}{
		{"unchanged (the rewrite itself is sound)", func(*estargz.JTOC) {}, ""},
		{"setuid added", func(toc *estargz.JTOC) {
			for _, e := range toc.Entries {
				if e.Name == "etc/hosts" {
					e.Mode |= 0o4000
				}
			}
		}, "is not the payload's"},
		{"a file added", func(toc *estargz.JTOC) {
			for _, e := range toc.Entries {
				if e.Name == "etc/hosts" {
					added := *e
					added.Name, added.Mode, added.UID = "usr/bin/su", 0o4755, 0
					toc.Entries = append(toc.Entries, &added)
				}
			}
		}, "beyond the payload's last entry"},
		{"a file dropped", func(toc *estargz.JTOC) { toc.Entries = toc.Entries[:len(toc.Entries)-1] }, "not in the TOC"},
		{"an offset moved", func(toc *estargz.JTOC) {
			for _, e := range toc.Entries {
				if e.Name == "etc/text" {
					e.Offset++
				}
			}
		}, "its data is in the stream at"},
		{"a chunk digest changed", func(toc *estargz.JTOC) {
			for _, e := range toc.Entries {
				if e.Name == "etc/hosts" {
					e.ChunkDigest = digest.FromString("x").String()
				}
			}
		}, "is not the payload's"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doctored := doctorZstdTOC(t, f, blob, res.Desc, tc.edit)
			_, err := stargz.CheckSource(f.Ctx, f.CS, doctored, converter.Zstd, digest.FromBytes(tarball))
			if tc.want == "" {
				require.NoError(t, err)
				return
			}
			assert.True(t, errdefs.IsInvalidArgument(err), "%v", err)
			assert.ErrorContains(t, err, tc.want)
		})
	}
}

// doctorZstdTOC stores the layer blob with its TOC rewritten by edit.
func doctorZstdTOC(t *testing.T, f *convertertest.Fixture, blob []byte, desc ocispec.Descriptor, edit func(*estargz.JTOC)) ocispec.Descriptor {
	t.Helper()
	doctored, annotations, err := convertertest.DoctorZstdTOC(blob, desc.Annotations[labels.UncompressedSizeAnnotation], edit)
	require.NoError(t, err)
	d := f.PutBlob(t, doctored, desc.MediaType, nil)
	d.Annotations = annotations
	return d
}

// A published zstd:chunked layer whose first frame declares a window over
// the limit is refused before that frame is decoded.
func TestCheckSourceRefusesAZstdWindowOverTheLimit(t *testing.T) {
	f := convertertest.NewFixture(t)
	zc, err := stargz.NewZstdChunked(stargz.ZstdChunkedOptions{CompressionLevel: 1})
	require.NoError(t, err)
	tarball := imagegen.TarBytes(convertertest.Cases()["regular files and dirs"])
	res, err := f.Conv.ConvertLayer(f.Ctx, zc, putLayer(t, f, tarball, "gzip"), nil)
	require.NoError(t, err)
	blob, err := content.ReadBlob(f.Ctx, f.CS, res.Desc)
	require.NoError(t, err)
	require.Zero(t, blob[4]&0x20, "the first frame has a window descriptor")
	blob[5] = 19 << 3 // window log 29: 512 MiB
	doctored := f.PutBlob(t, blob, res.Desc.MediaType, nil)
	_, err = stargz.CheckSource(f.Ctx, f.CS, doctored, converter.Zstd, digest.FromBytes(tarball))
	assert.True(t, errdefs.IsInvalidArgument(err), "%v", err)
	assert.ErrorContains(t, err, "max_zstd_window")
}
