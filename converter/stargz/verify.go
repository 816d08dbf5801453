package stargz

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

// Report is what Verify checked.
type Report struct {
	TOCDigest digest.Digest
	Entries   int   // TOC entries
	Files     int   // regular files read back and checked
	Bytes     int64 // file bytes read back
}

// Verify opens an eStargz or zstd:chunked layer, verifies its TOC against the TOC
// digest annotation, and reads every regular file back, checking each against
// the digest the TOC records. It reads the whole blob.
func Verify(ctx context.Context, cs content.Provider, desc ocispec.Descriptor) (Report, error) {
	want, err := digest.Parse(desc.Annotations[labels.TOCDigestAnnotation])
	if err != nil {
		return Report{}, fmt.Errorf("layer %s has no valid %s annotation: %w", desc.Digest, labels.TOCDigestAnnotation, errdefs.ErrInvalidArgument)
	}
	ra, err := cs.ReaderAt(ctx, desc)
	if err != nil {
		return Report{}, err
	}
	defer ra.Close()
	r, err := OpenTOC(ctx, &blockReaderAt{ra: ra, size: ra.Size()})
	if err != nil {
		return Report{}, fmt.Errorf("layer %s is not eStargz: %w", desc.Digest, err)
	}
	if _, err := r.VerifyTOC(want); err != nil {
		return Report{}, fmt.Errorf("layer %s: %v: %w", desc.Digest, err, errdefs.ErrInvalidArgument)
	}
	rep := Report{TOCDigest: r.TOCDigest()}
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

func checkFile(ctx context.Context, r *estargz.Reader, e *estargz.TOCEntry, rep *Report) error {
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
	// Read a chunk at a time: estargz decompresses a chunk from its start
	// for every read, so small reads would cost quadratic time.
	bufSize := e.ChunkSize
	if bufSize <= 0 || bufSize > e.Size {
		bufSize = e.Size
	}
	n, err := io.CopyBuffer(v, io.NewSectionReader(fr, 0, e.Size), make([]byte, max(bufSize, 1)))
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

// blockReaderAt reads its source in 4 MiB blocks and keeps the last one: the
// many small reads of a walk over an eStargz blob become a few large ones,
// which matters when the store is across a socket.
type blockReaderAt struct {
	ra    io.ReaderAt
	size  int64
	block []byte
	start int64
}

const verifyBlockSize = 4 << 20

// Size is the blob's size.
func (b *blockReaderAt) Size() int64 { return b.size }

func (b *blockReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if len(p) > verifyBlockSize/2 {
		return b.ra.ReadAt(p, off)
	}
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		if pos >= b.size {
			return n, io.EOF
		}
		if b.block == nil || pos < b.start || pos >= b.start+int64(len(b.block)) {
			b.start = pos - pos%verifyBlockSize
			size := min(int64(verifyBlockSize), b.size-b.start)
			if cap(b.block) < int(size) {
				b.block = make([]byte, size)
			}
			b.block = b.block[:size]
			if _, err := b.ra.ReadAt(b.block, b.start); err != nil && err != io.EOF {
				b.block = nil
				return n, err
			}
		}
		n += copy(p[n:], b.block[pos-b.start:])
	}
	return n, nil
}
