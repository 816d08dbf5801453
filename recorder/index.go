// Package recorder records which files a workload reads, per image layer,
// for optimized (prioritized) eStargz conversion: a per-layer file index with
// whiteouts and opaque directories, Record to resolve a path to the topmost
// layer holding it, and records stored in the content store as JSON lines in
// stargz-snapshotter's recorder.Entry format.
package recorder

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/lazyconv/lazyconv/converter/stargz"
	"github.com/lazyconv/lazyconv/internal/layerio"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
)

// layerFiles is what one layer holds: files (any non-directory entry and
// directories), whiteouts (deleted paths) and opaque directories, and how
// much a tmpfs needs to hold its entries (pages, see tmpfsBytes).
type layerFiles struct {
	present  map[string]bool
	whiteout map[string]bool
	opaque   map[string]bool
	bytes    int64
}

// Index tells, for each path, which layer of an image holds it.
type Index struct {
	manifest digest.Digest
	layers   []layerFiles
}

// Manifest is the manifest the index was built from.
func (ix *Index) Manifest() digest.Digest { return ix.manifest }

// Layers is the number of layers indexed.
func (ix *Index) Layers() int { return len(ix.layers) }

// unpackedBytes bounds what a tmpfs needs to hold every layer unpacked on
// top of each other: the sum over all layers, so entries that a later layer
// replaces or deletes are counted too.
func (ix *Index) unpackedBytes() int64 {
	var n int64
	for _, lf := range ix.layers {
		n += lf.bytes
	}
	return n
}

// tmpfsPage is the unit in which tmpfs accounts file data.
const tmpfsPage = 4096

// tmpfsBytes is what one entry costs a tmpfs, at most: its data in whole
// pages for a regular file, a page for a symlink (long targets take one) or a
// device, nothing for a directory or a hard link (which shares its target).
func tmpfsBytes(typ byte, size int64) int64 {
	switch typ {
	case tar.TypeDir, tar.TypeLink:
		return 0
	case tar.TypeReg: // Go's tar reader reports old-style and sparse files as TypeReg
		if size < 0 {
			return 0
		}
		return (size + tmpfsPage - 1) / tmpfsPage * tmpfsPage
	default:
		return tmpfsPage
	}
}

// tocTypes are the tar type flags of a TOC entry's types.
var tocTypes = map[string]byte{"dir": tar.TypeDir, "reg": tar.TypeReg, "hardlink": tar.TypeLink, "symlink": tar.TypeSymlink}

// BuildIndex indexes every layer of the image's manifest for the platform.
// An eStargz or zstd:chunked layer is indexed from its TOC (footer and TOC
// only); any other layer is read once, decompressed, for its tar headers.
func BuildIndex(ctx context.Context, cs content.Store, target ocispec.Descriptor, platform platforms.MatchComparer) (*Index, error) {
	mdesc, err := manifestDescriptor(ctx, cs, target, platform)
	if err != nil {
		return nil, err
	}
	m, err := images.Manifest(ctx, cs, mdesc, platform)
	if err != nil {
		return nil, err
	}
	ix := &Index{manifest: mdesc.Digest}
	for _, l := range m.Layers {
		if !images.IsLayerType(l.MediaType) {
			continue
		}
		lf, err := indexLayer(ctx, cs, l)
		if err != nil {
			return nil, fmt.Errorf("indexing layer %s: %w", l.Digest, err)
		}
		ix.layers = append(ix.layers, lf)
	}
	return ix, nil
}

func manifestDescriptor(ctx context.Context, cs content.Store, target ocispec.Descriptor, platform platforms.MatchComparer) (ocispec.Descriptor, error) {
	if images.IsManifestType(target.MediaType) {
		return target, nil
	}
	manifests, err := images.Children(ctx, cs, target)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	for _, m := range manifests {
		if images.IsManifestType(m.MediaType) && (m.Platform == nil || platform.Match(*m.Platform)) {
			return m, nil
		}
	}
	return ocispec.Descriptor{}, fmt.Errorf("no manifest for the platform in %s: %w", target.Digest, errdefs.ErrNotFound)
}

func indexLayer(ctx context.Context, cs content.Store, desc ocispec.Descriptor) (layerFiles, error) {
	lf := layerFiles{present: map[string]bool{}, whiteout: map[string]bool{}, opaque: map[string]bool{}}
	ra, err := cs.ReaderAt(ctx, desc)
	if err != nil {
		return lf, err
	}
	defer ra.Close()
	if r, err := stargz.OpenTOC(ctx, ra); err == nil {
		root, ok := r.Lookup("")
		if ok {
			walkTOC(root, "", &lf)
		}
		return lf, nil
	}
	dr, err := compression.DecompressStream(io.NewSectionReader(ra, 0, ra.Size()))
	if err != nil {
		return lf, fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
	}
	defer dr.Close()
	tr := tar.NewReader(dr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return lf, nil
		}
		if err != nil {
			return lf, fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
		}
		if err := layerio.SafeName(h.Name); err != nil {
			return lf, fmt.Errorf("layer %s: entry %q: %w", desc.Digest, h.Name, err)
		}
		lf.add(h.Name)
		lf.bytes += tmpfsBytes(h.Typeflag, h.Size)
	}
}

func walkTOC(e *estargz.TOCEntry, dir string, lf *layerFiles) {
	e.ForeachChild(func(base string, c *estargz.TOCEntry) bool {
		p := path.Join(dir, base)
		lf.add(p)
		typ, ok := tocTypes[c.Type]
		if !ok {
			typ = tar.TypeChar // a device or a fifo: a page, as tmpfsBytes counts them
		}
		lf.bytes += tmpfsBytes(typ, c.Size)
		if c.Type == "dir" {
			walkTOC(c, p, lf)
		}
		return true
	})
}

// add records one tar entry name.
func (lf *layerFiles) add(name string) {
	p := cleanPath(name)
	dir, base := path.Split(p)
	dir = strings.TrimSuffix(dir, "/")
	switch {
	case base == opaqueMarker:
		lf.opaque[dir] = true
	case strings.HasPrefix(base, whiteoutPrefix):
		lf.whiteout[path.Join(dir, strings.TrimPrefix(base, whiteoutPrefix))] = true
	case p != "":
		lf.present[p] = true
	}
}

func cleanPath(name string) string {
	return strings.TrimPrefix(path.Clean("/"+name), "/")
}

// Resolve returns the index of the topmost layer holding p. A path deleted by
// a whiteout, or hidden by an opaque directory, above every layer holding it
// is ErrNotFound; a path with ".." components is ErrInvalidArgument.
func (ix *Index) Resolve(p string) (int, error) {
	clean, err := checkPath(p)
	if err != nil {
		return 0, err
	}
	for i := len(ix.layers) - 1; i >= 0; i-- {
		lf := ix.layers[i]
		if lf.present[clean] {
			return i, nil
		}
		// Deleted here: the file or one of its parents is whited out.
		for q := clean; q != "" && q != "."; q = parent(q) {
			if lf.whiteout[q] {
				return 0, fmt.Errorf("%s was deleted in layer %d: %w", p, i, errdefs.ErrNotFound)
			}
		}
		// An opaque parent hides whatever lower layers hold below it.
		for q := parent(clean); q != "" && q != "."; q = parent(q) {
			if lf.opaque[q] {
				return 0, fmt.Errorf("%s is hidden by opaque directory %s in layer %d: %w", p, q, i, errdefs.ErrNotFound)
			}
		}
	}
	return 0, fmt.Errorf("%s is in no layer: %w", p, errdefs.ErrNotFound)
}

func parent(p string) string {
	d := path.Dir(p)
	if d == "." || d == "/" {
		return ""
	}
	return d
}

// checkPath cleans a recorded path, refusing any that could leave the root.
func checkPath(p string) (string, error) {
	if p == "" {
		return "", fmt.Errorf("empty path: %w", errdefs.ErrInvalidArgument)
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return "", fmt.Errorf("path %q leaves the root: %w", p, errdefs.ErrInvalidArgument)
		}
	}
	c := cleanPath(p)
	if c == "" {
		return "", fmt.Errorf("path %q names the root, not a file: %w", p, errdefs.ErrInvalidArgument)
	}
	return c, nil
}
