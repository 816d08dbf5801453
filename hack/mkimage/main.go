// Command mkimage writes an OCI image archive whose layers are tars of real
// directories, for lazyconv's demo and benchmarks:
//
//	go run ./hack/mkimage -o app.tar -name example.com/go:src $(go env GOROOT)/src/net $(go env GOROOT)/src/crypto:zstd
//
// Each argument is a directory, optionally followed by ":gzip" (the default),
// ":zstd" or ":none" for the layer's compression.
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/internal/imagegen"
)

func main() {
	out := flag.String("o", "image.tar", "archive to write")
	name := flag.String("name", "example.com/lazyconv/demo:latest", "image name")
	flag.Parse()
	if err := run(*out, *name, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(out, name string, dirs []string) error {
	if len(dirs) == 0 {
		return fmt.Errorf("name at least one directory")
	}
	img := imagegen.Image{Name: name}
	for _, arg := range dirs {
		dir, comp, _ := strings.Cut(arg, ":")
		mt := ocispec.MediaTypeImageLayerGzip
		switch comp {
		case "", "gzip":
			comp = "gzip"
		case "zstd":
			mt = ocispec.MediaTypeImageLayerZstd
		case "none":
			comp, mt = "", ocispec.MediaTypeImageLayer
		default:
			return fmt.Errorf("unknown compression %q in %q", comp, arg)
		}
		var tarball bytes.Buffer
		tw := tar.NewWriter(&tarball)
		prefix := strings.TrimPrefix(filepath.Clean(dir), "/")
		if _, err := imagegen.WriteDirTar(tw, dir, prefix, 0); err != nil {
			return err
		}
		if err := tw.Close(); err != nil {
			return err
		}
		var blob bytes.Buffer
		zw, err := imagegen.Compressor(&blob, comp)
		if err != nil {
			return err
		}
		if _, err := io.Copy(zw, &tarball); err != nil {
			return err
		}
		if err := zw.Close(); err != nil {
			return err
		}
		img.Layers = append(img.Layers, imagegen.Layer{MediaType: mt, Blob: blob.Bytes()})
	}
	return imagegen.WriteOCIArchiveFile(out, img)
}
