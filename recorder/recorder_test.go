package recorder_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/platforms"
	"github.com/containerd/stargz-snapshotter/estargz"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/converter/stargz"
	"github.com/lazyconv/lazyconv/internal/imagegen"
	"github.com/lazyconv/lazyconv/localstore"
	"github.com/lazyconv/lazyconv/recorder"
)

func TestMain(m *testing.M) {
	_ = log.SetLevel("error")
	os.Exit(m.Run())
}

func reg(name, body string) imagegen.Entry {
	return imagegen.Entry{Header: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644}, Body: []byte(body)}
}

func dir(name string) imagegen.Entry {
	return imagegen.Entry{Header: tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755}}
}

type fixture struct {
	ctx   context.Context
	store *localstore.Store
	conv  *converter.Converter
}

// layeredImage: layer 0 is a base; layer 1 deletes etc/a (whiteout) and
// makes usr opaque; layer 2 adds a file.
func layeredImage(t *testing.T) *fixture {
	t.Helper()
	ctx := namespaces.WithNamespace(context.Background(), "test")
	st, err := localstore.Open(ctx, t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	layers := [][]imagegen.Entry{
		{dir("etc/"), reg("etc/a", "a"), reg("etc/b", strings.Repeat("b", 5000)), dir("usr/"), dir("usr/lib/"), reg("usr/lib/x", "x"),
			dir("opt/"), dir("opt/d/"), reg("opt/d/f", "f"), reg("bin/sh", strings.Repeat("s", 9000))},
		{reg("etc/.wh.a", ""), dir("usr/"), reg("usr/.wh..wh..opq", ""), reg("usr/new", "n"), reg("opt/.wh.d", "")},
		{dir("app/"), reg("app/main", strings.Repeat("m", 7000)), reg("app/data", "d")},
	}
	img := imagegen.Image{Name: "app:v1"}
	for _, l := range layers {
		img.Layers = append(img.Layers, imagegen.Layer{MediaType: ocispec.MediaTypeImageLayerGzip, Blob: imagegen.Compress(imagegen.TarBytes(l), "gzip")})
	}
	_, err = imagegen.Store(ctx, st.ContentStore(), st.ImageStore(), img)
	require.NoError(t, err)
	conv, err := converter.New(st.ContentStore(), st.LeaseManager())
	require.NoError(t, err)
	return &fixture{ctx: ctx, store: st, conv: conv}
}

func (f *fixture) index(t *testing.T, ref string) *recorder.Index {
	t.Helper()
	img, err := f.store.ImageStore().Get(f.ctx, ref)
	require.NoError(t, err)
	ix, err := recorder.BuildIndex(f.ctx, f.store.ContentStore(), img.Target, platforms.All)
	require.NoError(t, err)
	return ix
}

func TestResolveHonoursWhiteoutsAndOpaqueDirs(t *testing.T) {
	f := layeredImage(t)
	// The same answers from tar headers (plain gzip) and from TOCs (eStargz).
	lc, err := stargz.NewEStargz(stargz.DefaultEStargzOptions())
	require.NoError(t, err)
	_, err = f.conv.ConvertImage(f.ctx, f.store.ImageStore(), "app:v1", "app:esgz", converter.ImageOptions{Layers: converter.Every(lc)})
	require.NoError(t, err)
	for _, ref := range []string{"app:v1", "app:esgz"} {
		ix := f.index(t, ref)
		require.Equal(t, 3, ix.Layers())
		for _, tc := range []struct {
			path  string
			layer int
			class func(error) bool
		}{
			{"etc/b", 0, nil},
			{"/etc/b", 0, nil},
			{"./etc//b", 0, nil},
			{"usr/new", 1, nil},
			{"app/main", 2, nil},
			{"bin/sh", 0, nil},
			{"etc/a", 0, errdefs.IsNotFound},     // whited out in layer 1
			{"usr/lib/x", 0, errdefs.IsNotFound}, // hidden by the opaque usr in layer 1
			{"opt/d/f", 0, errdefs.IsNotFound},   // its directory is whited out
			{"nowhere", 0, errdefs.IsNotFound},
			{"../etc/b", 0, errdefs.IsInvalidArgument},
			{"/../etc/passwd", 0, errdefs.IsInvalidArgument},
			{"app/../../etc/b", 0, errdefs.IsInvalidArgument},
			{"", 0, errdefs.IsInvalidArgument},
			{"/", 0, errdefs.IsInvalidArgument},
		} {
			t.Run(ref+" "+tc.path, func(t *testing.T) {
				layer, err := ix.Resolve(tc.path)
				if tc.class != nil {
					require.Error(t, err)
					assert.True(t, tc.class(err), "%v", err)
					return
				}
				require.NoError(t, err)
				assert.Equal(t, tc.layer, layer)
			})
		}
	}
}

func TestRecordRoundTripsThroughTheContentStore(t *testing.T) {
	f := layeredImage(t)
	ix := f.index(t, "app:v1")
	r := recorder.New(ix)
	for _, p := range []string{"/app/main", "etc/b", "app/main", "usr/new"} {
		require.NoError(t, r.Record(p))
	}
	require.Error(t, r.Record("etc/a"), "a deleted file is not recorded")
	require.Error(t, r.Record("../x"))
	desc, err := r.Commit(f.ctx, f.store.ContentStore())
	require.NoError(t, err)
	got, err := recorder.Load(f.ctx, f.store.ContentStore(), desc)
	require.NoError(t, err)
	assert.Equal(t, r.Entries(), got)
	require.Len(t, got, 3, "a path recorded twice is kept once")
	assert.Equal(t, "app/main", got[0].Path)
	assert.Equal(t, 2, *got[0].LayerIndex)
	assert.Equal(t, ix.Manifest().String(), got[0].ManifestDigest)

	// The format is stargz-snapshotter's recorder.Entry.
	var raw map[string]any
	line, _, _ := strings.Cut(string(must(content(f, desc))), "\n")
	require.NoError(t, json.Unmarshal([]byte(line), &raw))
	assert.Equal(t, map[string]any{"path": "app/main", "manifestDigest": ix.Manifest().String(), "layerIndex": float64(2)}, raw)

	_, err = recorder.Read(strings.NewReader(`{"path":"../../etc/shadow"}`))
	assert.True(t, errdefs.IsInvalidArgument(err))
	assert.Equal(t, map[int][]string{0: {"etc/b"}, 1: {"usr/new"}, 2: {"app/main"}}, recorder.PerLayer(ix, got))
}

func content(f *fixture, desc ocispec.Descriptor) ([]byte, error) {
	ra, err := f.store.ContentStore().ReaderAt(f.ctx, desc)
	if err != nil {
		return nil, err
	}
	defer ra.Close()
	return io.ReadAll(io.NewSectionReader(ra, 0, ra.Size()))
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

func TestPrioritizedConversionPutsRecordedFilesFirst(t *testing.T) {
	f := layeredImage(t)
	ix := f.index(t, "app:v1")
	r := recorder.New(ix)
	for _, p := range []string{"app/data", "app/main", "etc/b"} {
		require.NoError(t, r.Record(p))
	}
	perLayer := recorder.PerLayer(ix, r.Entries())
	res, err := f.conv.ConvertImage(f.ctx, f.store.ImageStore(), "app:v1", "app:opt", converter.ImageOptions{
		Layers: func(_ ocispec.Descriptor, index int, _ ocispec.Descriptor) (converter.LayerConverter, error) {
			o := stargz.DefaultPrioritizedOptions()
			o.Files = perLayer[index]
			return stargz.NewPrioritizedEStargz(o)
		},
	})
	require.NoError(t, err)
	require.Len(t, res.Layers, 3)
	for i, want := range [][]string{
		{"etc/b", estargz.PrefetchLandmark},
		{estargz.NoPrefetchLandmark}, // nothing recorded in layer 1
		{"app/data", "app/main", estargz.PrefetchLandmark},
	} {
		l := res.Layers[i].Desc
		toc := tocOrder(t, must(content(f, l)))
		require.GreaterOrEqual(t, len(toc), len(want))
		assert.Equal(t, want, toc[:len(want)], "layer %d starts with its recorded files, then the landmark", i)
		_, err := stargz.Verify(f.ctx, f.store.ContentStore(), l)
		require.NoError(t, err)
	}
}

// tocOrder lists the regular files of an eStargz blob in TOC order.
func tocOrder(t *testing.T, blob []byte) []string {
	t.Helper()
	rc, err := estargz.Unpack(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))), new(estargz.GzipDecompressor))
	require.NoError(t, err)
	tr := tar.NewReader(rc)
	var out []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		require.NoError(t, err)
		if h.Typeflag == tar.TypeReg {
			out = append(out, strings.TrimPrefix(h.Name, "./"))
		}
	}
}

// The index refuses layer entries that escape the root, as conversion does.
func TestIndexRefusesEntriesEscapingTheRoot(t *testing.T) {
	for _, name := range []string{"../../escape.txt", "/etc/passwd-evil", "a/../../b"} {
		t.Run(name, func(t *testing.T) {
			f := convertertest.NewFixture(t)
			tarball := imagegen.TarBytes([]imagegen.Entry{convertertest.File(name, []byte("x"))})
			desc, err := imagegen.Store(f.Ctx, f.CS, f.Store.ImageStore(), imagegen.Image{Name: "bad:v1", Layers: []imagegen.Layer{
				{MediaType: ocispec.MediaTypeImageLayerGzip, Blob: imagegen.Compress(tarball, "gzip")}}})
			require.NoError(t, err)
			_, err = recorder.BuildIndex(f.Ctx, f.CS, desc, platforms.All)
			require.Error(t, err)
			assert.True(t, errdefs.IsInvalidArgument(err), "%v", err)
		})
	}
}
