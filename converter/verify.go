package converter

import (
	"context"
	"fmt"
	"io"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/labels"
)

// EStargzReport is what VerifyEStargz checked.
type EStargzReport struct {
	TOCDigest digest.Digest
	Entries   int   // TOC entries
	Files     int   // regular files read back and checked
	Bytes     int64 // file bytes read back
}

// VerifyEStargz opens an eStargz layer, verifies its TOC against the TOC
// digest annotation, and reads every regular file back, checking each against
// the digest the TOC records. It reads the whole blob.
func VerifyEStargz(ctx context.Context, cs content.Provider, desc ocispec.Descriptor) (EStargzReport, error) {
	want, err := digest.Parse(desc.Annotations[labels.TOCDigestAnnotation])
	if err != nil {
		return EStargzReport{}, fmt.Errorf("layer %s has no valid %s annotation: %w", desc.Digest, labels.TOCDigestAnnotation, errdefs.ErrInvalidArgument)
	}
	ra, err := cs.ReaderAt(ctx, desc)
	if err != nil {
		return EStargzReport{}, err
	}
	defer ra.Close()
	r, err := estargz.Open(io.NewSectionReader(ra, 0, ra.Size()))
	if err != nil {
		return EStargzReport{}, fmt.Errorf("layer %s is not eStargz: %v: %w", desc.Digest, err, errdefs.ErrInvalidArgument)
	}
	if _, err := r.VerifyTOC(want); err != nil {
		return EStargzReport{}, fmt.Errorf("layer %s: %v: %w", desc.Digest, err, errdefs.ErrInvalidArgument)
	}
	rep := EStargzReport{TOCDigest: r.TOCDigest()}
	root, ok := r.Lookup("")
	if !ok {
		return rep, nil
	}
	var walk func(e *estargz.TOCEntry) error
	walk = func(e *estargz.TOCEntry) error {
		var err error
		e.ForeachChild(func(_ string, c *estargz.TOCEntry) bool {
			rep.Entries++
			switch c.Type {
			case "dir":
				err = walk(c)
			case "reg":
				err = checkFile(ctx, r, c, &rep)
			}
			return err == nil
		})
		return err
	}
	return rep, walk(root)
}

func checkFile(ctx context.Context, r *estargz.Reader, e *estargz.TOCEntry, rep *EStargzReport) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	fr, err := r.OpenFile(e.Name)
	if err != nil {
		return fmt.Errorf("opening %s: %w", e.Name, err)
	}
	want, err := digest.Parse(e.Digest)
	if err != nil {
		return fmt.Errorf("%s: TOC digest %q: %v: %w", e.Name, e.Digest, err, errdefs.ErrInvalidArgument)
	}
	v := want.Verifier()
	n, err := io.Copy(v, io.NewSectionReader(fr, 0, e.Size))
	if err != nil {
		return fmt.Errorf("reading %s: %w", e.Name, err)
	}
	if !v.Verified() {
		return fmt.Errorf("%s does not match its TOC digest %s: %w", e.Name, want, errdefs.ErrDataLoss)
	}
	rep.Files++
	rep.Bytes += n
	return nil
}
