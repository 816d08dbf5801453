package converter

import (
	"context"
	"fmt"
	"io"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/singleflight"

	"github.com/lazyconv/lazyconv/labels"
)

// DiffPair is a layer blob and the digest of its uncompressed tar (its diffID).
type DiffPair struct {
	DiffID digest.Digest
	Blob   digest.Digest
}

// DiffPairs computes layers' diffIDs, each blob's once (concurrent callers
// share the work), and caches them as containerd.io/uncompressed labels, so
// the next call is a label lookup.
type DiffPairs struct {
	cs      content.Store
	flights singleflight.Group
}

// NewDiffPairs returns a DiffPairs over cs.
func NewDiffPairs(cs content.Store) *DiffPairs { return &DiffPairs{cs: cs} }

// Of returns the diff pair of every layer, in order.
func (d *DiffPairs) Of(ctx context.Context, layers []ocispec.Descriptor) ([]DiffPair, error) {
	out := make([]DiffPair, 0, len(layers))
	for _, l := range layers {
		id, err := d.DiffID(ctx, l)
		if err != nil {
			return nil, err
		}
		out = append(out, DiffPair{DiffID: id, Blob: l.Digest})
	}
	return out, nil
}

// DiffID returns one layer's diffID, from its label or by decompressing it once.
func (d *DiffPairs) DiffID(ctx context.Context, layer ocispec.Descriptor) (digest.Digest, error) {
	info, err := d.cs.Info(ctx, layer.Digest)
	if err != nil {
		return "", err
	}
	if id, ok := labels.UncompressedDigest(info); ok {
		return id, nil
	}
	v, err, _ := d.flights.Do(layer.Digest.String(), func() (any, error) {
		ra, err := d.cs.ReaderAt(ctx, layer)
		if err != nil {
			return nil, err
		}
		defer ra.Close()
		r, err := compression.DecompressStream(io.NewSectionReader(ra, 0, ra.Size()))
		if err != nil {
			return nil, fmt.Errorf("layer %s: %v: %w", layer.Digest, err, errdefs.ErrInvalidArgument)
		}
		defer r.Close()
		dg := digest.SHA256.Digester()
		if _, err := io.Copy(dg.Hash(), r); err != nil {
			return nil, fmt.Errorf("layer %s: %v: %w", layer.Digest, err, errdefs.ErrInvalidArgument)
		}
		id := dg.Digest()
		_, err = d.cs.Update(ctx, content.Info{Digest: layer.Digest, Labels: map[string]string{labels.Uncompressed: id.String()}},
			"labels."+labels.Uncompressed)
		return id, err
	})
	if err != nil {
		return "", err
	}
	return v.(digest.Digest), nil
}
