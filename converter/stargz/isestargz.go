package stargz

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/internal/layerio"
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
	size, err := gzipTOCSize(ctx, ra)
	if err != nil || size < 0 {
		return false, err
	}
	return true, nil
}

// gzipTOCSize returns the size of the TOC of an eStargz (gzip) blob, or -1
// when the blob is no eStargz: it has no footer, or its footer points at no
// TOC that is the last entry. A TOC beyond the MaxTOCBytes limit of ctx is
// ErrInvalidArgument; it is never read, only skipped past once.
func gzipTOCSize(ctx context.Context, ra SizedReaderAt) (int64, error) {
	sr := io.NewSectionReader(ra, 0, ra.Size())
	var tocOffset int64
	err := contained(func() (err error) { tocOffset, _, err = estargz.OpenFooter(sr); return err })
	if err != nil || tocOffset < 0 || tocOffset >= ra.Size() {
		return -1, nil
	}
	zr, err := new(estargz.GzipDecompressor).Reader(io.NewSectionReader(ra, tocOffset, ra.Size()-tocOffset))
	if err != nil {
		return -1, nil
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	h, err := tr.Next()
	if err != nil || h.Name != estargz.TOCTarName {
		return -1, nil
	}
	if limit := converter.LimitsFrom(ctx).MaxTOCBytes; converter.Exceeds(h.Size, limit) {
		return -1, fmt.Errorf("its eStargz TOC is %d bytes, beyond the limit of %d (raise max_toc_bytes to read it): %w",
			h.Size, limit, errdefs.ErrInvalidArgument)
	}
	if _, err := tr.Next(); !errors.Is(err, io.EOF) {
		return -1, nil
	}
	return h.Size, nil
}

// zstdTOCSize bounds a zstd:chunked blob's TOC: it decompresses it (up to
// the MaxTOCBytes limit of ctx, never holding it, within its MaxZstdWindow)
// and refuses a larger one, or one whose frame declares a larger window
// (estargz.Open, which reads it next, would decode any window). A blob with
// no zstd:chunked footer passes: estargz.Open will say so.
func zstdTOCSize(ctx context.Context, ra SizedReaderAt) error {
	d := new(zstdchunked.Decompressor)
	if ra.Size() < d.FooterSize() {
		return nil
	}
	footer := make([]byte, d.FooterSize())
	if _, err := ra.ReadAt(footer, ra.Size()-d.FooterSize()); err != nil {
		return nil
	}
	_, off, size, err := d.ParseFooter(footer)
	if err != nil || off < 0 || size < 0 || off+size > ra.Size() {
		return nil
	}
	zr, err := layerio.NewZstdReader(ctx, io.NewSectionReader(ra, off, size))
	if err != nil {
		return nil
	}
	defer zr.Close()
	limit := converter.LimitsFrom(ctx).MaxTOCBytes
	want := limit + 1
	if limit < 0 {
		want = math.MaxInt64 // every frame, for its window
	}
	n, err := io.CopyN(io.Discard, zr, want)
	if errdefs.IsInvalidArgument(err) {
		return fmt.Errorf("its zstd:chunked TOC: %w", err)
	}
	if limit >= 0 && n > limit {
		return fmt.Errorf("its zstd:chunked TOC is more than %d bytes (the limit; raise max_toc_bytes to read it): %w",
			limit, errdefs.ErrInvalidArgument)
	}
	return nil
}

// SizedReaderAt is a blob to read at offsets (content.ReaderAt is one).
type SizedReaderAt interface {
	io.ReaderAt
	Size() int64
}

// OpenTOC opens an eStargz or zstd:chunked blob's TOC with estargz, which
// reads it whole, after checking it is within the MaxTOCBytes limit of ctx
// (ErrInvalidArgument beyond it).
func OpenTOC(ctx context.Context, ra SizedReaderAt) (*estargz.Reader, error) {
	if _, err := gzipTOCSize(ctx, ra); err != nil {
		return nil, err
	}
	if err := zstdTOCSize(ctx, ra); err != nil {
		return nil, err
	}
	var r *estargz.Reader
	err := contained(func() (err error) {
		r, err = estargz.Open(io.NewSectionReader(ra, 0, ra.Size()), estargz.WithDecompressors(new(zstdchunked.Decompressor)))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("no eStargz or zstd:chunked TOC: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return r, nil
}

// contained runs estargz's parsing of untrusted bytes, turning a panic into
// ErrInvalidArgument: estargz v0.19.1's footer parsing panics on some
// crafted footers (found by FuzzOpenTOC), and lazyconv runs inside
// containerd, which such a layer must not take down.
func contained(parse func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("estargz panicked parsing the blob (%v): %w", p, errdefs.ErrInvalidArgument)
		}
	}()
	return parse()
}

// readTOCDigest returns the digest of an eStargz layer's TOC JSON, which it
// streams (a TOC of any size is hashed in constant memory).
func readTOCDigest(ctx context.Context, cs content.Provider, desc ocispec.Descriptor) (digest.Digest, error) {
	ra, err := cs.ReaderAt(ctx, desc)
	if err != nil {
		return "", err
	}
	defer ra.Close()
	toc, chunks, err := openTOCJSONWithin(ctx, ra, ra)
	if err != nil {
		return "", fmt.Errorf("reading eStargz TOC: %w", err)
	}
	defer chunks.Close()
	defer toc.Close()
	dg := digest.SHA256.Digester()
	if _, err := io.Copy(dg.Hash(), toc); err != nil {
		return "", fmt.Errorf("reading eStargz TOC: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return dg.Digest(), nil
}
