package stargz_test

import (
	"archive/tar"
	"bytes"
	"context"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/converter/stargz"
	"github.com/lazyconv/lazyconv/internal/imagegen"
)

// memProvider serves one blob from memory.
type memProvider struct{ b []byte }

type memReaderAt struct{ *bytes.Reader }

func (m memReaderAt) Close() error { return nil }
func (m memReaderAt) Size() int64  { return m.Reader.Size() }

func (p memProvider) ReaderAt(context.Context, ocispec.Descriptor) (content.ReaderAt, error) {
	return memReaderAt{bytes.NewReader(p.b)}, nil
}

// FuzzCheckSource feeds doctored layers (honest eStargz and zstd:chunked
// layers, mutated) to the check of published layers: it may refuse them,
// never panic, hang or hold more than its buffers.
func FuzzCheckSource(f *testing.F) {
	fx := convertertest.NewFixture(f)
	tarball := imagegen.TarBytes([]imagegen.Entry{
		convertertest.Dir("bin/"), convertertest.File("bin/hello", []byte("#!/bin/sh\necho S\n")),
		{Header: tar.Header{Name: "bin/sh", Typeflag: tar.TypeLink, Linkname: "bin/hello", ModTime: convertertest.Epoch}},
	})
	src := fx.PutBlob(f, imagegen.Compress(tarball, "gzip"), ocispec.MediaTypeImageLayerGzip, nil)
	for _, lc := range []func() (converter.LayerConverter, error){
		func() (converter.LayerConverter, error) {
			return stargz.NewEStargz(stargz.EStargzOptions{CompressionLevel: 1})
		},
		func() (converter.LayerConverter, error) {
			return stargz.NewZstdChunked(stargz.ZstdChunkedOptions{CompressionLevel: 1})
		},
	} {
		conv, err := lc()
		if err != nil {
			f.Fatal(err)
		}
		res, err := fx.Conv.ConvertLayer(fx.Ctx, conv, src, nil)
		if err != nil {
			f.Fatal(err)
		}
		blob, err := content.ReadBlob(fx.Ctx, fx.CS, res.Desc)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(blob, res.Desc.MediaType == ocispec.MediaTypeImageLayerGzip)
	}
	want := digest.FromBytes(tarball)
	ctx := converter.WithLimits(context.Background(), converter.Limits{MaxTOCBytes: 1 << 20, MaxZstdWindow: 8 << 20})
	f.Fuzz(func(t *testing.T, blob []byte, gzipped bool) {
		comp := converter.Zstd
		if gzipped {
			comp = converter.Gzip
		}
		desc := ocispec.Descriptor{Digest: digest.FromBytes(blob), Size: int64(len(blob))}
		_, _ = stargz.CheckSource(ctx, memProvider{blob}, desc, comp, want)
	})
}
