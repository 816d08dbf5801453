package stargz

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/labels"
)

// IsEStargz reports whether the blob is eStargz: it has an eStargz footer and
// its TOC is the last entry (BuildKit's test). It reads only the footer and the
// TOC, and caches the answer as a label, so a second call reads nothing.
func IsEStargz(ctx context.Context, cs content.Store, dgst digest.Digest) (bool, error) {
	info, err := cs.Info(ctx, dgst)
	if err != nil {
		return false, err
	}
	if is, known := labels.IsEStargz(info); known {
		return is, nil
	}
	is, err := detectEStargz(ctx, cs, dgst)
	if err != nil {
		return false, err
	}
	info.Labels = map[string]string{labels.EStargz: labels.FormatBool(is)}
	if _, err := cs.Update(ctx, info, "labels."+labels.EStargz); err != nil {
		return false, fmt.Errorf("caching eStargz answer for %s: %w", dgst, err)
	}
	return is, nil
}

func detectEStargz(ctx context.Context, cs content.Provider, dgst digest.Digest) (bool, error) {
	ra, err := cs.ReaderAt(ctx, ocispec.Descriptor{Digest: dgst})
	if err != nil {
		return false, err
	}
	defer ra.Close()
	sr := io.NewSectionReader(ra, 0, ra.Size())
	tocOffset, _, err := estargz.OpenFooter(sr)
	if err != nil {
		return false, nil
	}
	if tocOffset < 0 || tocOffset >= ra.Size() {
		return false, nil
	}
	zr, err := new(estargz.GzipDecompressor).Reader(io.NewSectionReader(ra, tocOffset, ra.Size()-tocOffset))
	if err != nil {
		return false, nil
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	h, err := tr.Next()
	if err != nil || h.Name != estargz.TOCTarName {
		return false, nil
	}
	if _, err := tr.Next(); !errors.Is(err, io.EOF) {
		return false, nil
	}
	return true, nil
}

// readTOCDigest returns the digest of an eStargz layer's TOC JSON.
func readTOCDigest(ctx context.Context, cs content.Provider, desc ocispec.Descriptor) (digest.Digest, error) {
	ra, err := cs.ReaderAt(ctx, desc)
	if err != nil {
		return "", err
	}
	defer ra.Close()
	r, err := estargz.Open(io.NewSectionReader(ra, 0, ra.Size()))
	if err != nil {
		return "", fmt.Errorf("reading eStargz TOC: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return r.TOCDigest(), nil
}
