//go:build cgo

package soci_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	sociapi "github.com/awslabs/soci-snapshotter/soci"
	"github.com/awslabs/soci-snapshotter/ztoc"
	"github.com/awslabs/soci-snapshotter/ztoc/compression"
	fb "github.com/awslabs/soci-snapshotter/ztoc/fbs/ztoc"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	flatbuffers "github.com/google/flatbuffers/go"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/converter/soci"
	"github.com/lazyconv/lazyconv/labels"
)

// What an attacker's review of the soci format found, each refused now.

// A span size from a SOCI index (the publisher's) beyond MaxSpanSize, and a
// zTOC claiming a span and a tar no gzip of the layer's size can hold, are
// refused before anything is allocated for them (a span of 2^61 crashed
// the daemon: makeslice out of range in a worker).
func TestHugeSpansAreRefused(t *testing.T) {
	f := convertertest.NewFixture(t)
	opts := soci.Options{SpanSize: 256 << 10}
	layer, diffID := textLayer(t, f, "app", 4)
	z, err := soci.ZTOC(f.Ctx, f.CS, layer, opts)
	require.NoError(t, err)
	raw, err := content.ReadBlob(f.Ctx, f.CS, *z)
	require.NoError(t, err)
	zt, err := ztoc.Unmarshal(bytes.NewReader(raw))
	require.NoError(t, err)
	blob, err := content.ReadBlob(f.Ctx, f.CS, layer)
	require.NoError(t, err)
	const span = int64(1) << 61
	cp := make([]byte, 12) // a version 1 blob: one checkpoint (after the header), none written
	binary.LittleEndian.PutUint32(cp, 1)
	binary.LittleEndian.PutUint64(cp[4:], uint64(span))
	zt.Checkpoints, zt.MaxSpanID, zt.SpanDigests = cp, 0, []digest.Digest{digest.FromBytes(blob[10:])}
	isize := int64(binary.LittleEndian.Uint32(blob[len(blob)-4:]))
	zt.UncompressedArchiveSize = compression.Offset(isize + 1<<50) // the same modulo 2^32
	zd := storeZTOC(t, f, zt)
	for _, o := range []soci.Options{{SpanSize: span}, opts} {
		_, err = soci.VerifyZTOC(f.Ctx, f.CS, layer, diffID, zd, o)
		require.Error(t, err)
		assert.True(t, errdefs.IsInvalidArgument(err), "%v", err)
	}
}

// A flatbuffer listing one entry with a 1 MiB name 300 times (a 1 MiB
// zTOC that soci's decoder copies into 300 MiB) is refused before it is
// decoded.
func TestFlatbufferAmplificationIsRefused(t *testing.T) {
	f := convertertest.NewFixture(t)
	layer, diffID := textLayer(t, f, "app", 2)
	const n = 300
	b := flatbuffers.NewBuilder(0)
	name := b.CreateString(strings.Repeat("a", 1<<20))
	fb.FileMetadataStart(b)
	fb.FileMetadataAddName(b, name)
	entry := fb.FileMetadataEnd(b)
	fb.TOCStartMetadataVector(b, n)
	for range n {
		b.PrependUOffsetT(entry)
	}
	vec := b.EndVector(n)
	fb.TOCStart(b)
	fb.TOCAddMetadata(b, vec)
	toc := fb.TOCEnd(b)
	fb.ZtocStart(b)
	fb.ZtocAddToc(b, toc)
	b.Finish(fb.ZtocEnd(b))
	raw := b.FinishedBytes()
	zd := ocispec.Descriptor{MediaType: sociapi.SociLayerMediaType, Digest: digest.FromBytes(raw), Size: int64(len(raw))}
	require.NoError(t, content.WriteBlob(f.Ctx, f.CS, "fb", bytes.NewReader(raw), zd))
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := soci.VerifyZTOC(f.Ctx, f.CS, layer, diffID, zd, soci.Options{SpanSize: 256 << 10})
	runtime.ReadMemStats(&after)
	require.Error(t, err)
	assert.True(t, errdefs.IsInvalidArgument(err), "%v", err)
	assert.Contains(t, err.Error(), "max_toc_bytes")
	assert.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(32<<20), "refused before decoding")
}

// A small layer whose entries carry 1 MB of PAX xattr each would make a
// file table of 70 MB (300 MB before the review found it): refused at
// max_toc_bytes (64 MiB).
func TestHeavyPAXLayersAreRefused(t *testing.T) {
	f := convertertest.NewFixture(t)
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	big := strings.Repeat("v", 1000000)
	for i := range 70 {
		require.NoError(t, tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("f%d", i), Typeflag: tar.TypeReg, Mode: 0o644, Format: tar.FormatPAX,
			PAXRecords: map[string]string{"SCHILY.xattr.user.x": big}}))
	}
	require.NoError(t, tw.Close())
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	require.NoError(t, err)
	_, err = zw.Write(tb.Bytes())
	require.NoError(t, err)
	require.NoError(t, zw.Close())
	blob := gz.Bytes()
	layer := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	require.NoError(t, content.WriteBlob(f.Ctx, f.CS, "l", bytes.NewReader(blob), layer))
	_, err = soci.ZTOC(f.Ctx, f.CS, layer, soci.Options{SpanSize: 4 << 20})
	require.Error(t, err)
	assert.True(t, errdefs.IsInvalidArgument(err), "%v", err)
	assert.Contains(t, err.Error(), "max_toc_bytes")
}

// A layer with a sparse file (GNU tar --sparse, PAX format) gets no zTOC:
// soci's file table would give the packed fragments and what follows them
// in the tar as the file (soci's own builder indexes it so). A zTOC of it
// made elsewhere does not verify.
func TestSparseLayersGetNoZTOC(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "app")
	require.NoError(t, os.MkdirAll(src, 0o755))
	fh, err := os.Create(filepath.Join(src, "run"))
	require.NoError(t, err)
	_, err = fh.WriteString("benign")
	require.NoError(t, err)
	_, err = fh.WriteAt([]byte("EVIL"), 1<<20)
	require.NoError(t, err)
	require.NoError(t, fh.Close())
	out, err := exec.Command("tar", "--sparse", "--format=posix", "-C", dir, "-cf", filepath.Join(dir, "layer.tar"), "app").CombinedOutput()
	require.NoError(t, err, "GNU tar: %s", out)
	tarBytes, err := os.ReadFile(filepath.Join(dir, "layer.tar"))
	require.NoError(t, err)
	blob := gzipBytes(t, tarBytes)
	f := convertertest.NewFixture(t)
	layer := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	require.NoError(t, content.WriteBlob(f.Ctx, f.CS, "l", bytes.NewReader(blob), layer))
	opts := soci.Options{SpanSize: 1 << 10}
	z, err := soci.ZTOC(f.Ctx, f.CS, layer, opts)
	require.NoError(t, err)
	assert.Nil(t, z, "no zTOC: the layer is fetched whole")

	// soci's own builder indexes it; that zTOC is refused.
	scratch := filepath.Join(dir, "layer.tar.gz")
	require.NoError(t, os.WriteFile(scratch, blob, 0o600))
	theirs, err := ztoc.NewBuilder(soci.BuildToolIdentifier).BuildZtoc(scratch, opts.SpanSize, ztoc.WithCompression(compression.Gzip))
	require.NoError(t, err)
	zd := storeZTOC(t, f, theirs)
	_, err = soci.VerifyZTOC(f.Ctx, f.CS, layer, digest.FromBytes(tarBytes), zd, opts)
	require.Error(t, err)
	assert.True(t, errdefs.IsInvalidArgument(err), "%v", err)
	assert.Contains(t, err.Error(), "sparse")
}

// A trusted publication's zTOCs never enter the variant cache: one refused
// (its manifest is not the source with its index) leaves nothing the
// conversion here then uses, and one adopted is named only by the adopted
// manifest, marked unverified, not by the layer's label.
func TestTrustedZTOCsAreNotCached(t *testing.T) {
	opts := soci.Options{SpanSize: 512 << 10, MinLayerSize: 1 << 10}
	a, img, honest, idx := publisher(t, opts)
	var pm, si ocispec.Manifest
	readJSON(t, a, idx.Manifests[0], &pm)
	readJSON(t, a, idx.Manifests[1], &si)
	zb, err := content.ReadBlob(a.Ctx, a.CS, si.Layers[0])
	require.NoError(t, err)
	zt, err := ztoc.Unmarshal(bytes.NewReader(zb))
	require.NoError(t, err)
	zt.FileMetadata[0].Name = "usr/bin/sudo"
	zd := storeZTOC(t, a, zt)
	bad := si.Layers[0]
	bad.Digest, bad.Size = zd.Digest, zd.Size
	hostileIndex, err := soci.Index(a.Ctx, a.CS, []ocispec.Descriptor{bad})
	require.NoError(t, err)
	refused := writeManifest(t, a, pm, map[string]string{sociapi.ImageAnnotationSociIndexDigest: hostileIndex.Digest.String(), "x": "y"})
	adopted := writeManifest(t, a, pm, map[string]string{sociapi.ImageAnnotationSociIndexDigest: hostileIndex.Digest.String()})

	for _, tc := range []struct {
		name      string
		published ocispec.Descriptor
		adopted   bool
	}{{"refused", refused, false}, {"adopted", adopted, true}} {
		t.Run(tc.name, func(t *testing.T) {
			b := convertertest.NewFixture(t)
			image(t, b)
			o := sociImage(opts)
			o.Shared = &publication{from: a.CS, published: tc.published, trusted: true}
			ctx := context.WithValue(b.Ctx, csKey{}, b.CS)
			res, err := b.Conv.ConvertImage(ctx, b.Store.ImageStore(), img.Name, img.Name+"-soci", o)
			require.NoError(t, err)
			var bi ocispec.Index
			readJSON(t, b, res.Image.Target, &bi)
			var used ocispec.Manifest
			readJSON(t, b, bi.Manifests[1], &used)
			info, err := b.CS.Info(b.Ctx, pm.Layers[0].Digest)
			require.NoError(t, err)
			for k, v := range info.Labels {
				assert.NotEqual(t, zd.Digest.String(), v, "label %s names the unchecked zTOC", k)
			}
			if !tc.adopted {
				assert.Equal(t, si.Layers[0].Digest, used.Layers[0].Digest, "converted here with its own zTOC")
				return
			}
			assert.Equal(t, zd.Digest, used.Layers[0].Digest, "the trusted publisher's zTOC, as published")
			mi, err := b.CS.Info(b.Ctx, bi.Manifests[0].Digest)
			require.NoError(t, err)
			assert.NotEmpty(t, mi.Labels[labels.AdoptedUnverified])
			// Converting again (nothing cached) builds here: the honest image.
			again, err := b.Conv.ConvertImage(b.Ctx, b.Store.ImageStore(), img.Name, img.Name+"-soci2", sociImage(opts))
			require.NoError(t, err)
			assert.Equal(t, honest.Image.Target.Digest, again.Image.Target.Digest)
		})
	}
}

func storeZTOC(t *testing.T, f *convertertest.Fixture, zt *ztoc.Ztoc) ocispec.Descriptor {
	t.Helper()
	r, d, err := ztoc.Marshal(zt)
	require.NoError(t, err)
	b, err := io.ReadAll(r)
	require.NoError(t, err)
	d.MediaType = sociapi.SociLayerMediaType
	require.NoError(t, content.WriteBlob(f.Ctx, f.CS, "ztoc-"+d.Digest.Encoded(), bytes.NewReader(b), d))
	return d
}

func gzipBytes(t *testing.T, b []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	_, err := zw.Write(b)
	require.NoError(t, err)
	require.NoError(t, zw.Close())
	return out.Bytes()
}

// image verify checks what a SOCI index lists before it fetches it: a zTOC
// declared at 50 GiB is refused, not downloaded.
func TestVerifyFetchesNoOversizedZTOC(t *testing.T) {
	f := convertertest.NewFixture(t)
	layer, diffID := textLayer(t, f, "app", 2)
	huge := ocispec.Descriptor{MediaType: sociapi.SociLayerMediaType, Digest: digest.FromString("huge"), Size: 50 << 30,
		Annotations: map[string]string{sociapi.IndexAnnotationImageLayerDigest: layer.Digest.String(), sociapi.IndexAnnotationSociSpanSize: "4194304"}}
	idx := writeManifest(t, f, ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: sociapi.SociIndexArtifactTypeV2,
		Layers: []ocispec.Descriptor{huge}}, nil)
	m := ocispec.Manifest{Layers: []ocispec.Descriptor{layer}, Annotations: map[string]string{sociapi.ImageAnnotationSociIndexDigest: idx.Digest.String()}}
	var fetched []digest.Digest
	checks, err := soci.Verifier().VerifyManifest(f.Ctx, f.CS, m, []digest.Digest{diffID}, func(_ context.Context, d ocispec.Descriptor) error {
		fetched = append(fetched, d.Digest)
		return nil
	})
	require.NoError(t, err)
	require.Len(t, checks, 1)
	require.Error(t, checks[0].Err)
	assert.True(t, errdefs.IsInvalidArgument(checks[0].Err), "%v", checks[0].Err)
	assert.NotContains(t, fetched, huge.Digest, "not fetched")
}
