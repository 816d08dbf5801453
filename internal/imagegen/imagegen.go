// Package imagegen builds container images for lazyconv's tests, demo and
// benchmarks: tar layers from crafted entries or real directories, and images
// stored straight into a content store or written as OCI archives.
package imagegen

import (
	"archive/tar"
	"bytes"
	"context"
	_ "crypto/sha256" // digests of generated blobs
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Entry is one tar entry: a header and, for regular files, its content.
type Entry struct {
	Header tar.Header
	Body   []byte
}

// WriteTar writes entries as a tar stream (with its end-of-archive blocks).
func WriteTar(w io.Writer, entries []Entry) error {
	tw := tar.NewWriter(w)
	for _, e := range entries {
		h := e.Header
		if h.Typeflag == tar.TypeReg && h.Size == 0 {
			h.Size = int64(len(e.Body))
		}
		if err := tw.WriteHeader(&h); err != nil {
			return err
		}
		if len(e.Body) > 0 {
			if _, err := tw.Write(e.Body); err != nil {
				return err
			}
		}
	}
	return tw.Close()
}

// TarBytes is WriteTar into memory.
func TarBytes(entries []Entry) []byte {
	var b bytes.Buffer
	if err := WriteTar(&b, entries); err != nil {
		panic(err)
	}
	return b.Bytes()
}

// WriteDirTar writes the regular files, directories and symlinks under dir as
// tar entries named prefix/<relative path>, in lexical order, and returns the
// file bytes written. It stops adding files once limit bytes (if > 0) are in.
func WriteDirTar(tw *tar.Writer, dir, prefix string, limit int64) (int64, error) {
	var written int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // unreadable parts of a real tree are skipped
		}
		if limit > 0 && written >= limit {
			return filepath.SkipAll
		}
		rel, _ := filepath.Rel(dir, path)
		name := filepath.ToSlash(filepath.Join(prefix, rel))
		info, err := d.Info()
		if err != nil {
			return nil
		}
		var link string
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(path); err != nil {
				return nil
			}
		} else if !info.Mode().IsRegular() && !info.IsDir() {
			return nil
		}
		h, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return nil
		}
		h.Name = name
		h.Uname, h.Gname = "", ""
		if info.IsDir() {
			h.Name += "/"
		}
		if !info.Mode().IsRegular() {
			return tw.WriteHeader(h)
		}
		f, err := os.Open(path)
		if err != nil {
			return nil
		}
		defer f.Close()
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		n, err := io.Copy(tw, f)
		written += n
		return err
	})
	return written, err
}

// Goroot returns the Go installation's root, as `go env GOROOT` tells it.
func Goroot() (string, error) {
	out, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOROOT: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// WriteGorootTar writes a tar of real files from GOROOT (sources, packages,
// binaries: a realistic mix) of at least size file bytes, repeating the tree
// under numbered directories named after prefix when it is smaller than
// size. Different prefixes give different layers of the same files.
func WriteGorootTar(w io.Writer, prefix string, size int64) error {
	root, err := Goroot()
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	var total int64
	for i := 0; total < size; i++ {
		n, err := WriteDirTar(tw, root, prefix+strconv.Itoa(i), size-total)
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("GOROOT %s has no files: %w", root, errdefs.ErrNotFound)
		}
		total += n
	}
	return tw.Close()
}

// Compress compresses a tar with the given compression ("", "gzip" or "zstd").
func Compress(tarball []byte, compression string) []byte {
	var b bytes.Buffer
	w, err := Compressor(&b, compression)
	if err != nil {
		panic(err)
	}
	w.Write(tarball)
	w.Close()
	return b.Bytes()
}

// Compressor returns a writer compressing into w ("", "gzip" or "zstd").
func Compressor(w io.Writer, compression string) (io.WriteCloser, error) {
	switch compression {
	case "gzip":
		return gzip.NewWriterLevel(w, gzip.DefaultCompression)
	case "zstd":
		return zstd.NewWriter(w)
	case "":
		return nopCloser{w}, nil
	}
	return nil, fmt.Errorf("unknown compression %q: %w", compression, errdefs.ErrInvalidArgument)
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// Layer is a layer blob to put in an image.
type Layer struct {
	MediaType string
	// Blob is the layer's content; Open, when set, is used instead for large blobs.
	Blob []byte
	Open func() (io.ReadCloser, int64, error)
	// DiffID is the digest of the uncompressed tar; computed from Blob when
	// empty (by decompressing), which Open-based layers must not rely on.
	DiffID digest.Digest
}

// Image describes an image to build.
type Image struct {
	Name   string
	Layers []Layer
	// Docker uses Docker media types for the manifest and config.
	Docker bool
	// Platform defaults to linux/amd64.
	Platform *ocispec.Platform
	// Config is the runtime configuration (default: Cmd /bin/sh).
	Config *ocispec.ImageConfig
	// EditConfig and EditManifest, if set, change the config and the
	// manifest before they are written (hostile images for tests).
	EditConfig   func(*ocispec.Image)
	EditManifest func(*ocispec.Manifest)
	// RawConfig, if set, is written as the config instead (a config that is
	// no JSON, say).
	RawConfig []byte
	// Indexes, if positive, wraps the manifest in that many image indexes,
	// each listing the next (the image's target is the outermost, at
	// depth 1; the manifest is in the one at depth Indexes).
	Indexes int
	// EditIndex, if set, changes each index before it is written.
	EditIndex func(depth int, index *ocispec.Index)
}

// WithName returns the image under another name.
func (img Image) WithName(name string) Image {
	img.Name = name
	return img
}

// Store writes the image's blobs into cs with containerd's GC labels and
// creates (or replaces) its record in is. It returns the image's target: the
// manifest's descriptor, or the outermost index's (see Image.Indexes).
func Store(ctx context.Context, cs content.Ingester, is images.Store, img Image) (ocispec.Descriptor, error) {
	_, mdesc, err := build(img, func(desc ocispec.Descriptor, r io.Reader, lbls map[string]string) error {
		return content.WriteBlob(ctx, cs, "imagegen-"+desc.Digest.String(), r, desc, content.WithLabels(lbls))
	})
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	rec := images.Image{Name: img.Name, Target: mdesc}
	if _, err := is.Update(ctx, rec, "target"); errdefs.IsNotFound(err) {
		_, err = is.Create(ctx, rec)
		return mdesc, err
	} else if err != nil {
		return mdesc, err
	}
	return mdesc, nil
}

// WriteOCIArchive writes the image as an OCI image layout tar that
// `lazyconv image import` (and ctr) accept.
func WriteOCIArchive(w io.Writer, img Image) error { return WriteOCIArchiveImages(w, img) }

// WriteOCIArchiveImages writes the images as one OCI image layout tar
// (each blob once), which ctr and `lazyconv image import` import at once.
func WriteOCIArchiveImages(w io.Writer, imgs ...Image) error {
	a := newArchive(w)
	var manifests []ocispec.Descriptor
	for _, img := range imgs {
		mdesc, err := a.image(img)
		if err != nil {
			return err
		}
		mdesc.Annotations = map[string]string{images.AnnotationImageName: img.Name, ocispec.AnnotationRefName: img.Name}
		manifests = append(manifests, mdesc)
	}
	return a.close(manifests)
}

// archive writes an OCI image layout as a tar, each blob once.
type archive struct {
	tw      *tar.Writer
	written map[digest.Digest]bool
}

func newArchive(w io.Writer) *archive {
	return &archive{tw: tar.NewWriter(w), written: map[digest.Digest]bool{}}
}

func (a *archive) file(name string, r io.Reader, size int64) error {
	if err := a.tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: size, Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}); err != nil {
		return err
	}
	_, err := io.CopyN(a.tw, r, size)
	return err
}

func (a *archive) blob(desc ocispec.Descriptor, r io.Reader) error {
	if len(a.written) == 0 {
		for _, dir := range []string{"blobs/", "blobs/sha256/"} {
			if err := a.tw.WriteHeader(&tar.Header{Name: dir, Mode: 0o755, Typeflag: tar.TypeDir, ModTime: time.Unix(0, 0)}); err != nil {
				return err
			}
		}
	}
	if a.written[desc.Digest] {
		return nil
	}
	a.written[desc.Digest] = true
	return a.file("blobs/sha256/"+desc.Digest.Encoded(), r, desc.Size)
}

// image writes an image's blobs and returns its target.
func (a *archive) image(img Image) (ocispec.Descriptor, error) {
	_, mdesc, err := build(img, func(desc ocispec.Descriptor, r io.Reader, _ map[string]string) error { return a.blob(desc, r) })
	return mdesc, err
}

// close writes the layout's index.json listing manifests, and ends the tar.
func (a *archive) close(manifests []ocispec.Descriptor) error {
	index, _ := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: manifests})
	layout := []byte(`{"imageLayoutVersion":"1.0.0"}`)
	if err := a.file("oci-layout", bytes.NewReader(layout), int64(len(layout))); err != nil {
		return err
	}
	if err := a.file("index.json", bytes.NewReader(index), int64(len(index))); err != nil {
		return err
	}
	return a.tw.Close()
}

// WriteOCIArchiveFile writes the image as an OCI archive at path.
func WriteOCIArchiveFile(path string, img Image) error { return WriteOCIArchiveFiles(path, img) }

// WriteOCIArchiveIndexFile writes, at path, an OCI archive of one image
// named name whose target is an image index listing each of imgs (their
// names are not used) under its platform: a multi-platform image.
func WriteOCIArchiveIndexFile(path, name string, imgs ...Image) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	a := newArchive(f)
	index := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex}
	for _, img := range imgs {
		mdesc, err := a.image(img)
		if err != nil {
			return err
		}
		p := ocispec.Platform{OS: "linux", Architecture: "amd64"}
		if img.Platform != nil {
			p = *img.Platform
		}
		mdesc.Platform = &p
		index.Manifests = append(index.Manifests, mdesc)
	}
	ib, _ := json.Marshal(index)
	idesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromBytes(ib), Size: int64(len(ib)),
		Annotations: map[string]string{images.AnnotationImageName: name, ocispec.AnnotationRefName: name}}
	if err := a.blob(idesc, bytes.NewReader(ib)); err != nil {
		return err
	}
	if err := a.close([]ocispec.Descriptor{idesc}); err != nil {
		return err
	}
	return f.Close()
}

// WriteOCIArchiveFiles writes the images as one OCI archive at path.
func WriteOCIArchiveFiles(path string, imgs ...Image) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := WriteOCIArchiveImages(f, imgs...); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

type putFunc func(desc ocispec.Descriptor, r io.Reader, labels map[string]string) error

// build emits layers, config, manifest and indexes through put, and returns
// the layer and config descriptors and the image's target.
func build(img Image, put putFunc) ([]ocispec.Descriptor, ocispec.Descriptor, error) {
	platform := ocispec.Platform{OS: "linux", Architecture: "amd64"}
	if img.Platform != nil {
		platform = *img.Platform
	}
	var (
		layers  []ocispec.Descriptor
		diffIDs []digest.Digest
	)
	mlabels := map[string]string{}
	for i, l := range img.Layers {
		diffID := l.DiffID
		var desc ocispec.Descriptor
		if l.Open != nil {
			rc, size, err := l.Open()
			if err != nil {
				return nil, ocispec.Descriptor{}, err
			}
			dg := digest.SHA256.Digester()
			tmp, err := os.CreateTemp("", "imagegen-*")
			if err != nil {
				rc.Close()
				return nil, ocispec.Descriptor{}, err
			}
			_, err = io.Copy(io.MultiWriter(tmp, dg.Hash()), rc)
			rc.Close()
			if err != nil {
				tmp.Close()
				os.Remove(tmp.Name())
				return nil, ocispec.Descriptor{}, err
			}
			desc = ocispec.Descriptor{MediaType: l.MediaType, Digest: dg.Digest(), Size: size}
			_, _ = tmp.Seek(0, io.SeekStart)
			err = put(desc, tmp, nil)
			tmp.Close()
			os.Remove(tmp.Name())
			if err != nil {
				return nil, ocispec.Descriptor{}, err
			}
		} else {
			desc = ocispec.Descriptor{MediaType: l.MediaType, Digest: digest.FromBytes(l.Blob), Size: int64(len(l.Blob))}
			if diffID == "" {
				d, err := uncompressedDigest(l.Blob)
				if err != nil {
					return nil, ocispec.Descriptor{}, err
				}
				diffID = d
			}
			if err := put(desc, bytes.NewReader(l.Blob), nil); err != nil {
				return nil, ocispec.Descriptor{}, err
			}
		}
		layers = append(layers, desc)
		diffIDs = append(diffIDs, diffID)
		mlabels["containerd.io/gc.ref.content.l."+strconv.Itoa(i)] = desc.Digest.String()
	}
	runConfig := ocispec.ImageConfig{Cmd: []string{"/bin/sh"}, Env: []string{"PATH=/usr/bin:/bin"}}
	if img.Config != nil {
		runConfig = *img.Config
	}
	cfg := ocispec.Image{
		Platform: platform,
		Config:   runConfig,
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: diffIDs},
	}
	if img.EditConfig != nil {
		img.EditConfig(&cfg)
	}
	cfgBytes, _ := json.Marshal(cfg)
	if img.RawConfig != nil {
		cfgBytes = img.RawConfig
	}
	cfgType, mType := ocispec.MediaTypeImageConfig, ocispec.MediaTypeImageManifest
	if img.Docker {
		cfgType, mType = images.MediaTypeDockerSchema2Config, images.MediaTypeDockerSchema2Manifest
	}
	cdesc := ocispec.Descriptor{MediaType: cfgType, Digest: digest.FromBytes(cfgBytes), Size: int64(len(cfgBytes))}
	if err := put(cdesc, bytes.NewReader(cfgBytes), nil); err != nil {
		return nil, ocispec.Descriptor{}, err
	}
	mlabels["containerd.io/gc.ref.content.config"] = cdesc.Digest.String()
	m := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: mType, Config: cdesc, Layers: layers}
	if img.EditManifest != nil {
		m.Layers = append([]ocispec.Descriptor(nil), layers...)
		img.EditManifest(&m)
	}
	mBytes, _ := json.Marshal(m)
	mdesc := ocispec.Descriptor{MediaType: mType, Digest: digest.FromBytes(mBytes), Size: int64(len(mBytes)), Platform: &platform}
	if err := put(mdesc, bytes.NewReader(mBytes), mlabels); err != nil {
		return nil, ocispec.Descriptor{}, err
	}
	iType := ocispec.MediaTypeImageIndex
	if img.Docker {
		iType = images.MediaTypeDockerSchema2ManifestList
	}
	target := mdesc
	for depth := img.Indexes; depth >= 1; depth-- {
		index := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: iType, Manifests: []ocispec.Descriptor{target}}
		if img.EditIndex != nil {
			img.EditIndex(depth, &index)
		}
		iBytes, _ := json.Marshal(index)
		idesc := ocispec.Descriptor{MediaType: iType, Digest: digest.FromBytes(iBytes), Size: int64(len(iBytes))}
		ilabels := map[string]string{}
		for i, m := range index.Manifests {
			ilabels["containerd.io/gc.ref.content.m."+strconv.Itoa(i)] = m.Digest.String()
		}
		if err := put(idesc, bytes.NewReader(iBytes), ilabels); err != nil {
			return nil, ocispec.Descriptor{}, err
		}
		target = idesc
	}
	return append(layers, cdesc), target, nil
}

func uncompressedDigest(blob []byte) (digest.Digest, error) {
	var r io.Reader = bytes.NewReader(blob)
	switch {
	case bytes.HasPrefix(blob, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(r)
		if err != nil {
			return digest.FromBytes(blob), nil // corrupt on purpose: any diffID will do
		}
		r = zr
	case bytes.HasPrefix(blob, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(r)
		if err != nil {
			return "", err
		}
		defer zr.Close()
		r = zr
	}
	dg := digest.SHA256.Digester()
	if _, err := io.Copy(dg.Hash(), r); err != nil {
		return digest.FromBytes(blob), nil
	}
	return dg.Digest(), nil
}
