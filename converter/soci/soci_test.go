//go:build cgo

package soci_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	sociapi "github.com/awslabs/soci-snapshotter/soci"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/converter/soci"
	"github.com/lazyconv/lazyconv/internal/imagegen"
	"github.com/lazyconv/lazyconv/internal/socistore"
)

// image stores a two-layer image: a layer of text and random files large
// enough for several spans, and one below the minimum size.
func image(t *testing.T, f *convertertest.Fixture) images.Image {
	t.Helper()
	rnd := rand.New(rand.NewPCG(1, 2))
	random := make([]byte, 3<<20)
	for i := range random {
		random[i] = byte(rnd.IntN(256))
	}
	var big []imagegen.Entry
	for i := range 40 {
		e := imagegen.Entry{Body: append([]byte("text file "), random[i*60000:(i+1)*60000]...)}
		e.Header.Name, e.Header.Typeflag, e.Header.Mode = "usr/share/f"+string(rune('a'+i%26))+string(rune('a'+i/26)), '0', 0o644
		big = append(big, e)
	}
	e := imagegen.Entry{Body: random}
	e.Header.Name, e.Header.Typeflag, e.Header.Mode = "usr/lib/blob", '0', 0o644
	big = append(big, e)
	// Every kind of entry soci indexes, and the headers that change where
	// an entry's data starts (a long name, PAX records with an xattr).
	for _, h := range []tar.Header{
		{Name: "usr/share/doc/", Typeflag: tar.TypeDir, Mode: 0o755, Uid: 0, Gid: 0, ModTime: time.Unix(1700000000, 0)},
		{Name: "usr/bin/python3", Typeflag: tar.TypeSymlink, Linkname: "python3.11", Mode: 0o777, Uname: "root", Gname: "root"},
		{Name: "usr/lib/blob-again", Typeflag: tar.TypeLink, Linkname: "usr/lib/blob", Mode: 0o644},
		{Name: "dev/null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3, Mode: 0o666},
		{Name: "dev/sda", Typeflag: tar.TypeBlock, Devmajor: 8, Devminor: 0, Mode: 0o660},
		{Name: "run/fifo", Typeflag: tar.TypeFifo, Mode: 0o600, Uid: 1000, Gid: 1000},
		{Name: "usr/share/" + strings.Repeat("a-very-long-directory-name/", 8) + "file", Typeflag: tar.TypeReg, Mode: 0o644, Size: 5},
		{Name: "usr/bin/ping", Typeflag: tar.TypeReg, Mode: 0o4755, Size: 4, PAXRecords: map[string]string{"SCHILY.xattr.security.capability": "\x01\x02"}},
	} {
		e := imagegen.Entry{Header: h}
		if h.Size > 0 {
			e.Body = random[:h.Size]
		}
		big = append(big, e)
	}
	small := imagegen.Entry{Body: []byte("small")}
	small.Header.Name, small.Header.Typeflag, small.Header.Mode = "etc/small", '0', 0o644
	img := imagegen.Image{Name: "example.com/soci/app:v1"}
	for _, entries := range [][]imagegen.Entry{big, {small}} {
		img.Layers = append(img.Layers, imagegen.Layer{MediaType: ocispec.MediaTypeImageLayerGzip,
			Blob: imagegen.Compress(imagegen.TarBytes(entries), "gzip")})
	}
	_, err := imagegen.Store(f.Ctx, f.CS, f.Store.ImageStore(), img)
	require.NoError(t, err)
	stored, err := f.Store.ImageStore().Get(f.Ctx, img.Name)
	require.NoError(t, err)
	return stored
}

// lazyconv's zTOCs and SOCI index v2 are byte for byte those
// soci-snapshotter's own builder (what `soci convert` runs) writes for the
// same image, span size and minimum layer size.
func TestZTOCsAndIndexAreSoci(t *testing.T) {
	f := convertertest.NewFixture(t)
	img := image(t, f)
	opts := soci.Options{SpanSize: 512 << 10, MinLayerSize: 1 << 10}
	lease, err := f.Store.LeaseManager().Create(f.Ctx, leases.WithRandomID(), leases.WithExpiration(time.Hour))
	require.NoError(t, err)
	defer f.Store.LeaseManager().Delete(f.Ctx, lease) //nolint:errcheck
	lctx := leases.WithLease(f.Ctx, lease.ID)
	ours, err := soci.ManifestIndex(lctx, f.CS, img.Target, opts)
	require.NoError(t, err)

	bs := socistore.New(f.CS, f.Store.LeaseManager())
	root := filepath.Join(t.TempDir(), "soci")
	require.NoError(t, os.MkdirAll(root, 0o700))
	db, err := sociapi.NewDB(sociapi.ArtifactsDbPath(root))
	require.NoError(t, err)
	b, err := sociapi.NewIndexBuilder(f.CS, bs, sociapi.WithSpanSize(opts.SpanSize), sociapi.WithMinLayerSize(opts.MinLayerSize),
		sociapi.WithBuildToolIdentifier(soci.BuildToolIdentifier), sociapi.WithArtifactsDb(db), sociapi.WithForceRecreateZtocs(true))
	require.NoError(t, err)
	bctx, cleanup, err := bs.BatchOpen(f.Ctx)
	require.NoError(t, err)
	defer cleanup(f.Ctx) //nolint:errcheck
	theirs, err := b.Convert(bctx, img, sociapi.ConvertWithNoGarbageCollectionLabels())
	require.NoError(t, err)
	raw, err := content.ReadBlob(f.Ctx, f.CS, *theirs)
	require.NoError(t, err)
	var idx ocispec.Index
	require.NoError(t, json.Unmarshal(raw, &idx))
	var sociIndex *ocispec.Descriptor
	for i, m := range idx.Manifests {
		if m.ArtifactType == sociapi.SociIndexArtifactTypeV2 {
			sociIndex = &idx.Manifests[i]
		}
	}
	require.NotNil(t, sociIndex, "soci's image index binds a SOCI index v2")
	assert.Equal(t, sociIndex.Digest, ours.Digest, "the same SOCI index, byte for byte")
	assert.Equal(t, sociIndex.Size, ours.Size)

	// And the SOCI-enabled image: the same image index, byte for byte
	// (its annotated manifest and its SOCI index entry included).
	res, err := f.Conv.ConvertImage(lctx, f.Store.ImageStore(), img.Name, img.Name+"-soci", sociImage(opts))
	require.NoError(t, err)
	assert.Equal(t, *theirs, res.Image.Target, "the same SOCI-enabled image index as soci convert's")

	var m ocispec.Manifest
	raw, err = content.ReadBlob(f.Ctx, f.CS, ours)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(raw, &m))
	require.Len(t, m.Layers, 1, "one zTOC: the small layer gets none")
	assert.Equal(t, "524288", m.Layers[0].Annotations[sociapi.IndexAnnotationSociSpanSize])

	// Again: the zTOC is found by the layer's variant label, not rebuilt,
	// and the index is the same.
	again, err := soci.ManifestIndex(lctx, f.CS, img.Target, opts)
	require.NoError(t, err)
	assert.Equal(t, ours, again)
}

// flushedGzip compresses b, ending a deflate block every n bytes.
func flushedGzip(t *testing.T, b []byte, n int) []byte {
	t.Helper()
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	for len(b) > 0 {
		k := min(n, len(b))
		_, err := zw.Write(b[:k])
		require.NoError(t, err)
		require.NoError(t, zw.Flush())
		b = b[k:]
	}
	require.NoError(t, zw.Close())
	return out.Bytes()
}

// sociImage are the image options the soci format converts with.
func sociImage(o soci.Options) converter.ImageOptions {
	return converter.ImageOptions{DockerToOCI: true, Manifests: soci.Manifests(o),
		Finish: func(ctx context.Context, cs content.Store, target ocispec.Descriptor) (ocispec.Descriptor, error) {
			return soci.Bind(ctx, cs, target, o)
		}}
}

func TestOptionsAreChecked(t *testing.T) {
	for _, o := range []soci.Options{{SpanSize: 0}, {SpanSize: 100}, {SpanSize: soci.MaxSpanSize + 1}, {SpanSize: 4 << 20, MinLayerSize: -1}} {
		assert.True(t, errdefs.IsInvalidArgument(o.Validate()), "%+v", o)
	}
	require.NoError(t, soci.DefaultOptions().Validate())
}

// What a layer holds cannot make the zTOC builder escape the house's
// rules: a path climbing out of the layer root, data that is not the gzip
// its media type says, and a bomb whose checkpoints would not fit the bound
// are refused (InvalidArgument) as soon as the one pass over them finds
// it, and nothing is linked.
func TestHostileLayersAreRefused(t *testing.T) {
	entry := func(name string, body []byte) imagegen.Entry {
		e := imagegen.Entry{Body: body}
		e.Header.Name, e.Header.Typeflag, e.Header.Mode = name, '0', 0o644
		return e
	}
	for _, tc := range []struct {
		name string
		blob []byte
		span int64
		want string
	}{
		{"escaping path", imagegen.Compress(imagegen.TarBytes([]imagegen.Entry{entry("../../etc/passwd", []byte("x"))}), "gzip"), 4 << 20, "climbs out"},
		{"not gzip", []byte("this is not gzip at all, though the media type says so"), 4 << 20, "gzip"},
		// A deflate block ends every KiB (a flush each time): at a span of
		// 1 KiB, a checkpoint of 32 KiB per KiB of tar.
		{"checkpoint bomb", flushedGzip(t, imagegen.TarBytes([]imagegen.Entry{entry("zeros", make([]byte, 8<<20))}), 1<<10), 1 << 10, "checkpoints"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := convertertest.NewFixture(t)
			img := imagegen.Image{Name: "example.com/hostile:v1", Layers: []imagegen.Layer{{MediaType: ocispec.MediaTypeImageLayerGzip, Blob: tc.blob}}}
			_, err := imagegen.Store(f.Ctx, f.CS, f.Store.ImageStore(), img)
			require.NoError(t, err)
			stored, err := f.Store.ImageStore().Get(f.Ctx, img.Name)
			require.NoError(t, err)
			var m ocispec.Manifest
			raw, err := content.ReadBlob(f.Ctx, f.CS, stored.Target)
			require.NoError(t, err)
			require.NoError(t, json.Unmarshal(raw, &m))
			_, err = soci.ZTOC(f.Ctx, f.CS, m.Layers[0], soci.Options{SpanSize: tc.span})
			require.Error(t, err)
			assert.True(t, errdefs.IsInvalidArgument(err), "%v", err)
			assert.Contains(t, err.Error(), tc.want)
			info, err := f.CS.Info(f.Ctx, m.Layers[0].Digest)
			require.NoError(t, err)
			for k := range info.Labels {
				assert.NotContains(t, k, "soci", "no zTOC linked")
			}
		})
	}
}
