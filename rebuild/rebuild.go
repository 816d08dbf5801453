// Package rebuild makes layer blobs that are gone from the content store
// again from the snapshots containerd unpacked them into (BuildKit's
// cache/blobs idea): after `ctr content prune references`, CRI's
// discard_unpacked_layers, or for a committed container, the files are still
// on the machine. The layer at index i of an image is the difference between
// the committed snapshot of the chain ID of the config's diff_ids[:i+1] and
// that of diff_ids[:i], which containerd's diff service writes as a new blob
// (whiteouts included). It holds the same files as the original, not its tar
// bytes, so it has a diffID of its own.
package rebuild

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/images"
	ctdconverter "github.com/containerd/containerd/v2/core/images/converter"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/converter"
)

// snapshotLabelPrefix starts the label containerd puts on an unpacked
// image's config: "containerd.io/gc.ref.snapshot.<snapshotter>" = chain ID.
const snapshotLabelPrefix = "containerd.io/gc.ref.snapshot."

// Rebuilder rebuilds layers from snapshots.
type Rebuilder struct {
	cs          content.Store
	snapshotter func(name string) (snapshots.Snapshotter, error)
	differ      diff.Comparer
}

// New returns a Rebuilder over a content store, the snapshotters (by name)
// and a differ writing into cs.
func New(cs content.Store, snapshotter func(name string) (snapshots.Snapshotter, error), differ diff.Comparer) *Rebuilder {
	return &Rebuilder{cs: cs, snapshotter: snapshotter, differ: differ}
}

// Layer rebuilds the layer at index of manifest, written under ctx's lease
// with its containerd.io/uncompressed label. ErrNotFound says why there is
// nothing to rebuild it from (the image was not unpacked, or its snapshot is
// gone); the error names the snapshotter and chain ID it looked for.
func (r *Rebuilder) Layer(ctx context.Context, manifest ocispec.Descriptor, index int) (ocispec.Descriptor, error) {
	var m ocispec.Manifest
	if _, err := ctdconverter.ReadJSON(ctx, r.cs, &m, manifest); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("reading manifest %s: %w", manifest.Digest, err)
	}
	if index < 0 || index >= len(m.Layers) {
		return ocispec.Descriptor{}, fmt.Errorf("manifest %s has no layer %d: %w", manifest.Digest, index, errdefs.ErrInvalidArgument)
	}
	var cfg ocispec.Image
	cfgLabels, err := ctdconverter.ReadJSON(ctx, r.cs, &cfg, m.Config)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("reading config %s: %w", m.Config.Digest, err)
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return ocispec.Descriptor{}, fmt.Errorf("config %s lists %d diff_ids for %d layers: %w",
			m.Config.Digest, len(cfg.RootFS.DiffIDs), len(m.Layers), errdefs.ErrInvalidArgument)
	}
	name := ""
	for k := range cfgLabels {
		if n, ok := strings.CutPrefix(k, snapshotLabelPrefix); ok {
			name = n
			break
		}
	}
	if name == "" {
		return ocispec.Descriptor{}, fmt.Errorf("the image was never unpacked (config %s names no snapshot): %w", m.Config.Digest, errdefs.ErrNotFound)
	}
	sn, err := r.snapshotter(name)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("snapshotter %s: %w", name, err)
	}
	chain := identity.ChainID(cfg.RootFS.DiffIDs[:index+1])
	if _, err := sn.Stat(ctx, chain.String()); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("snapshotter %s has no snapshot %s for layer %d: %w", name, chain, index, err)
	}
	key := "lazyconv-rebuild-" + randomID()
	defer func() {
		cleanup := context.WithoutCancel(ctx)
		_ = sn.Remove(cleanup, key+"-upper")
		_ = sn.Remove(cleanup, key+"-lower")
	}()
	var lower []mount.Mount
	if index > 0 {
		parent := identity.ChainID(cfg.RootFS.DiffIDs[:index])
		if lower, err = sn.View(ctx, key+"-lower", parent.String()); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("snapshotter %s: viewing %s: %w", name, parent, err)
		}
	}
	upper, err := sn.View(ctx, key+"-upper", chain.String())
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("snapshotter %s: viewing %s: %w", name, chain, err)
	}
	mediaType := converter.LayerMediaType(m.Layers[index].MediaType, converter.Gzip)
	if !images.IsLayerType(mediaType) {
		mediaType = ocispec.MediaTypeImageLayerGzip
	}
	desc, err := r.differ.Compare(ctx, lower, upper, diff.WithMediaType(mediaType),
		diff.WithReference("lazyconv-rebuild-"+chain.Encoded()))
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("rebuilding layer %d from snapshot %s (%s): %w", index, chain, name, err)
	}
	if _, err := r.cs.Info(ctx, desc.Digest); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("rebuilt layer %s: %w", desc.Digest, err)
	}
	return desc, nil
}

func randomID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
