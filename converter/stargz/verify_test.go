package stargz

import (
	"bytes"
	"io"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/labels"
)

// Verify reads back what the layout writer wrote (eStargz and zstd:chunked),
// and what estargz.Build writes (chunks sharing a stream: inner offsets),
// and refuses what was tampered with, with the class that says why.
func TestVerify(t *testing.T) {
	f := convertertest.NewFixture(t)
	type layer struct {
		blob []byte
		toc  digest.Digest
	}
	put := func(t *testing.T, l layer) ocispec.Descriptor {
		return f.PutBlob(t, l.blob, ocispec.MediaTypeImageLayerGzip, nil)
	}
	verify := func(t *testing.T, l layer) (Report, error) {
		desc := put(t, l)
		desc.Annotations = map[string]string{labels.TOCDigestAnnotation: l.toc.String()}
		return Verify(f.Ctx, f.CS, desc)
	}
	for name, tarball := range layoutCases() {
		t.Run(name, func(t *testing.T) {
			var esgz, zst bytes.Buffer
			toc, _ := writeLayout(t, tarball, newGzipCompressor(newGzipStreams(6, DefaultDeflate())), &esgz, 1<<20)
			rep, err := verify(t, layer{esgz.Bytes(), toc})
			require.NoError(t, err)
			require.Equal(t, toc, rep.TOCDigest)

			ztoc, _ := writeLayout(t, tarball, &zstdChunkedCompressor{streams: newZstdStreams(1)}, &zst, 1<<20)
			zrep, err := verify(t, layer{zst.Bytes(), ztoc})
			require.NoError(t, err)
			require.Equal(t, rep.Files, zrep.Files)
			require.Equal(t, rep.Bytes, zrep.Bytes)
			require.Equal(t, rep.Entries, zrep.Entries)

			// estargz's own writer, several chunks to a stream.
			var built bytes.Buffer
			ew := estargz.NewWriterLevel(&built, 1)
			ew.ChunkSize, ew.MinChunkSize = 64<<10, 256<<10
			require.NoError(t, ew.AppendTarLossLess(bytes.NewReader(tarball)))
			btoc, err := ew.Close()
			require.NoError(t, err)
			brep, err := verify(t, layer{built.Bytes(), btoc})
			require.NoError(t, err)
			require.Equal(t, rep.Bytes, brep.Bytes)
		})
	}

	tarball := layoutCases()["chunked"]
	var good bytes.Buffer
	toc, _ := writeLayout(t, tarball, newGzipCompressor(newGzipStreams(6, DefaultDeflate())), &good, 1<<20)
	corrupt := func(off int) []byte {
		b := bytes.Clone(good.Bytes())
		b[off] ^= 0xff
		return b
	}
	for _, tc := range []struct {
		name  string
		layer layer
		class error
	}{
		{"file data corrupt", layer{corrupt(good.Len() / 3), toc}, errdefs.ErrDataLoss},
		{"TOC digest differs", layer{good.Bytes(), digest.FromString("other")}, errdefs.ErrInvalidArgument},
		{"no footer", layer{good.Bytes()[:good.Len()-10], toc}, errdefs.ErrInvalidArgument},
		{"plain gzip", layer{gzipBytes(t, tarball), toc}, errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := verify(t, tc.layer)
			require.ErrorIs(t, err, tc.class)
		})
	}
}

func gzipBytes(t *testing.T, b []byte) []byte {
	var out bytes.Buffer
	c := newGzipCompressor(newGzipStreams(1, DeflateGo))
	w, err := c.Writer(&out)
	require.NoError(t, err)
	_, err = io.Copy(w, bytes.NewReader(b))
	require.NoError(t, err)
	require.NoError(t, w.Close())
	return out.Bytes()
}
