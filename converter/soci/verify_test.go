//go:build cgo

package soci_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"testing"

	"github.com/awslabs/soci-snapshotter/ztoc"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/converter/soci"
	"github.com/lazyconv/lazyconv/internal/imagegen"
)

// textLayer stores a gzip layer of compressible text (its deflate blocks
// refer back into the checkpoints' windows) and returns it with its diffID.
func textLayer(t *testing.T, f *convertertest.Fixture, name string, files int) (ocispec.Descriptor, digest.Digest) {
	t.Helper()
	var entries []imagegen.Entry
	for i := range files {
		var body bytes.Buffer
		for line := range 4000 {
			fmt.Fprintf(&body, "%s: line %d of file %d, %x\n", name, line, i, line*i*7919)
		}
		e := imagegen.Entry{Body: body.Bytes()}
		e.Header.Name, e.Header.Typeflag, e.Header.Mode = fmt.Sprintf("usr/share/doc/%s/%03d.txt", name, i), '0', 0o644
		entries = append(entries, e)
	}
	tarBytes := imagegen.TarBytes(entries)
	// GNU gzip, as most real layers are made: no stored blocks in text (Go's
	// gzip ends with an empty one), so every span replays in Go.
	gz := exec.Command("gzip", "-n", "-6")
	gz.Stdin = bytes.NewReader(tarBytes)
	blob, err := gz.Output()
	require.NoError(t, err, "GNU gzip (Debian's gzip package)")
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	require.NoError(t, content.WriteBlob(f.Ctx, f.CS, "layer-"+name, bytes.NewReader(blob), desc))
	return desc, digest.FromBytes(tarBytes)
}

// A zTOC is checked against its layer without building one: the one built
// here checks out, and every way of changing what soci-snapshotter would
// serve through it (the file table, a checkpoint, a span's digest, the
// sizes, another layer's zTOC, another span size) is refused with
// InvalidArgument saying what is wrong.
func TestVerifyZTOC(t *testing.T) {
	f := convertertest.NewFixture(t)
	opts := soci.Options{SpanSize: 256 << 10}
	layer, diffID := textLayer(t, f, "app", 30)
	other, otherDiffID := textLayer(t, f, "lib", 12)
	z, err := soci.ZTOC(f.Ctx, f.CS, layer, opts)
	require.NoError(t, err)
	require.NotNil(t, z)
	rep, err := soci.VerifyZTOC(f.Ctx, f.CS, layer, diffID, *z, opts)
	require.NoError(t, err)
	assert.False(t, rep.Rebuilt, "every span replayed in Go, none rebuilt")
	assert.Equal(t, 30, rep.Files)
	assert.Greater(t, rep.Spans, 4, "several spans checked")
	zOther, err := soci.ZTOC(f.Ctx, f.CS, other, opts)
	require.NoError(t, err)
	_, err = soci.VerifyZTOC(f.Ctx, f.CS, other, otherDiffID, *zOther, opts)
	require.NoError(t, err)

	raw, err := content.ReadBlob(f.Ctx, f.CS, *z)
	require.NoError(t, err)
	parse := func() *ztoc.Ztoc {
		zt, err := ztoc.Unmarshal(bytes.NewReader(raw))
		require.NoError(t, err)
		return zt
	}
	store := func(zt *ztoc.Ztoc) ocispec.Descriptor {
		r, d, err := ztoc.Marshal(zt)
		require.NoError(t, err)
		b, err := io.ReadAll(r)
		require.NoError(t, err)
		require.NoError(t, content.WriteBlob(f.Ctx, f.CS, "ztoc-"+d.Digest.Encoded(), bytes.NewReader(b), d))
		return d
	}
	const header, packed = 12, 8 + 8 + 1 + 32<<10 // soci's checkpoint blob: count, span; then in, out, bits, window each
	checkpoint := func(zt *ztoc.Ztoc, i int) []byte {
		cp := bytes.Clone(zt.Checkpoints)
		zt.Checkpoints = cp
		return cp[header+i*packed : header+(i+1)*packed]
	}
	for _, tc := range []struct {
		name   string
		tamper func(zt *ztoc.Ztoc)
		layer  ocispec.Descriptor
		diffID digest.Digest
		opts   soci.Options
		want   string
	}{
		{name: "a renamed file", tamper: func(zt *ztoc.Ztoc) { zt.FileMetadata[3].Name = "usr/bin/sudo" }, want: "file table"},
		{name: "a file pointing at another's bytes", tamper: func(zt *ztoc.Ztoc) {
			zt.FileMetadata[2].UncompressedOffset = zt.FileMetadata[1].UncompressedOffset
		}, want: "invalid toc entry"}, // soci's own reader refuses entries that overlap
		{name: "a file made setuid", tamper: func(zt *ztoc.Ztoc) { zt.FileMetadata[0].Mode |= 0o4000 }, want: "file table"},
		{name: "a file left out", tamper: func(zt *ztoc.Ztoc) { zt.FileMetadata = zt.FileMetadata[1:] }, want: "file table"},
		{name: "a checkpoint's window", tamper: func(zt *ztoc.Ztoc) {
			w := checkpoint(zt, 2)[17:]
			for i := range w {
				w[i] ^= 0x20
			}
		}, want: "tar header"}, // the span inflates, to other bytes
		{name: "a checkpoint's input offset", tamper: func(zt *ztoc.Ztoc) {
			in := checkpoint(zt, 2)[0:8]
			binary.LittleEndian.PutUint64(in, binary.LittleEndian.Uint64(in)+3)
		}, want: "span"},
		{name: "a checkpoint's output offset", tamper: func(zt *ztoc.Ztoc) {
			out := checkpoint(zt, 2)[8:16]
			binary.LittleEndian.PutUint64(out, binary.LittleEndian.Uint64(out)+1000)
		}, want: "span"},
		{name: "a span digest", tamper: func(zt *ztoc.Ztoc) { zt.SpanDigests[1] = digest.FromString("other") }, want: "compressed bytes"},
		{name: "the uncompressed size", tamper: func(zt *ztoc.Ztoc) { zt.UncompressedArchiveSize -= 512 }, want: ""},
		{name: "the compressed size", tamper: func(zt *ztoc.Ztoc) { zt.CompressedArchiveSize++ }, want: "compressed bytes"},
		{name: "another layer's zTOC", layer: other, diffID: otherDiffID, want: "compressed bytes"},
		{name: "another span size", opts: soci.Options{SpanSize: 512 << 10}, want: "span 524288"},
		{name: "the wrong diffID", diffID: otherDiffID, want: "inflate to"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := *z
			if tc.tamper != nil {
				zt := parse()
				tc.tamper(zt)
				d = store(zt)
			}
			l, id, o := layer, diffID, opts
			if tc.layer.Digest != "" {
				l, id = tc.layer, tc.diffID
			}
			if tc.diffID != "" {
				id = tc.diffID
			}
			if tc.opts.SpanSize != 0 {
				o = tc.opts
			}
			_, err := soci.VerifyZTOC(f.Ctx, f.CS, l, id, d, o)
			require.Error(t, err)
			assert.True(t, errdefs.IsInvalidArgument(err), "%v", err)
			// Go's gzip ends with an empty stored block: a last span
			// starting mid-byte is then checked by building (see
			// Report.Rebuilt), which names the zTOC it built instead.
			if !strings.Contains(err.Error(), "built here is") && !strings.Contains(err.Error(), "uncompressed, not") {
				assert.Contains(t, err.Error(), tc.want)
			}
		})
	}

	t.Run("not a zTOC", func(t *testing.T) {
		for i, b := range [][]byte{[]byte("{}"), bytes.Repeat([]byte{0xff}, 64), raw[:len(raw)/2]} {
			d := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromBytes(b), Size: int64(len(b))}
			require.NoError(t, content.WriteBlob(f.Ctx, f.CS, fmt.Sprint("garbage-", i), bytes.NewReader(b), d))
			_, err := soci.VerifyZTOC(f.Ctx, f.CS, layer, diffID, d, opts)
			require.Error(t, err)
			assert.True(t, errdefs.IsInvalidArgument(err), "%v", err)
		}
	})
}
