package stargz_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/converter/stargz"
	"github.com/lazyconv/lazyconv/internal/imagegen"
)

func gzipMember(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, _ = zw.Write(b)
	_ = zw.Close()
	return buf.Bytes()
}

// tocMember is an eStargz TOC stream holding js.
func tocMember(js []byte) []byte {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	tw := tar.NewWriter(zw)
	_ = tw.WriteHeader(&tar.Header{Name: estargz.TOCTarName, Typeflag: tar.TypeReg, Mode: 0o444, Size: int64(len(js))})
	_, _ = tw.Write(js)
	_ = tw.Flush()
	_ = zw.Close()
	return b.Bytes()
}

// A TOC whose JSON a snapshotter's encoding/json reads differently from the
// entries checked (a second entries key in another case, which it matches
// case-insensitively and takes last), pointing a file at attacker data in an
// extra stream before the footer, is refused; so is any extra stream there.
// (Found by review: before, CheckSource accepted the first, and stargz's
// reader served the attacker's file, setuid.)
func TestCheckSourceRefusesTOCsReadDifferently(t *testing.T) {
	f := convertertest.NewFixture(t)
	esgz, err := stargz.NewEStargz(stargz.EStargzOptions{CompressionLevel: 1})
	require.NoError(t, err)
	tarball := imagegen.TarBytes([]imagegen.Entry{
		{Header: tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755}},
		{Header: tar.Header{Name: "bin/hello", Typeflag: tar.TypeReg, Mode: 0o755}, Body: []byte("#!/bin/sh\necho S\n")},
	})
	res, err := f.Conv.ConvertLayer(f.Ctx, esgz, putLayer(t, f, tarball, "gzip"), nil)
	require.NoError(t, err)
	ra, err := f.CS.ReaderAt(f.Ctx, res.Desc)
	require.NoError(t, err)
	blob := make([]byte, ra.Size())
	_, err = ra.ReadAt(blob, 0)
	require.NoError(t, err)
	ra.Close()
	tocOff, fsize, err := estargz.OpenFooter(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))))
	require.NoError(t, err)
	footer := blob[len(blob)-int(fsize):]
	zr, err := gzip.NewReader(bytes.NewReader(blob[tocOff:]))
	require.NoError(t, err)
	tr := tar.NewReader(zr)
	_, err = tr.Next()
	require.NoError(t, err)
	orig, err := io.ReadAll(tr)
	require.NoError(t, err)
	var jt estargz.JTOC
	require.NoError(t, json.Unmarshal(orig, &jt))
	evil := []byte("#!/bin/sh\necho not S\n")

	forge := func(extraKey string) []byte {
		var js []byte
		for range 3 { // a fixed point: the attacker's offset depends on the TOC's size
			member := tocMember(orig)
			if js != nil {
				member = tocMember(js)
			}
			var bad []*estargz.TOCEntry
			for _, e := range jt.Entries {
				c := *e
				if c.Name == "bin/hello" {
					c.Size, c.Offset, c.ChunkSize, c.Mode = int64(len(evil)), tocOff+int64(len(member)), 0, 0o4755
					c.Digest, c.ChunkDigest = digest.FromBytes(evil).String(), digest.FromBytes(evil).String()
				}
				bad = append(bad, &c)
			}
			badJSON, err := json.Marshal(bad)
			require.NoError(t, err)
			js = orig
			if extraKey != "" {
				js = append(append(append(bytes.TrimRight(bytes.Clone(orig), "\n\t }"), []byte(",\""+extraKey+"\":")...), badJSON...), '}')
			}
		}
		out := append(append([]byte{}, blob[:tocOff]...), tocMember(js)...)
		return append(append(out, gzipMember(evil)...), footer...)
	}
	for _, tc := range []struct {
		name, key, want string
	}{
		{"entries again, in another case", "Entries", `key "Entries"`},
		{"entries twice", "entries", `key "entries"`},
		{"an unknown key", "prefetch", `key "prefetch"`},
		{"only a stream between the TOC and the footer", "", "streams between the payload and the footer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			desc := f.PutBlob(t, forge(tc.key), res.Desc.MediaType, nil)
			_, err := stargz.CheckSource(f.Ctx, f.CS, desc, converter.Gzip, digest.FromBytes(tarball))
			assert.True(t, errdefs.IsInvalidArgument(err), "%v", err)
			assert.ErrorContains(t, err, tc.want)
		})
	}
}
