package layerio

import (
	"archive/tar"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"maps"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// Rewritten is a tar stream re-encoded entry by entry with Go's tar writer:
// sparse files become regular files of their logical size, holes written as
// zeros (as containerd's own unpack writes them to disk); every other entry
// keeps its header fields and content. The files are the source's, the bytes
// are not, so a layer made from it is not lossless. It streams: nothing is
// held beyond one copy buffer.
type Rewritten struct {
	pr   *io.PipeReader
	hash hash.Hash
}

// Rewrite starts rewriting src (read to its end, or until Close).
func Rewrite(src io.Reader) *Rewritten {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(rewrite(src, pw)) }()
	return &Rewritten{pr: pr, hash: sha256.New()}
}

func rewrite(src io.Reader, w io.Writer) error {
	tr := tar.NewReader(src)
	tw := tar.NewWriter(w)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return tw.Close()
		}
		if err != nil {
			return fmt.Errorf("rewriting the layer: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		out := *h
		out.PAXRecords = maps.Clone(h.PAXRecords)
		if IsSparse(h) {
			out.Typeflag = tar.TypeReg
			for k := range out.PAXRecords {
				if strings.HasPrefix(k, "GNU.sparse.") {
					delete(out.PAXRecords, k)
				}
			}
		}
		if len(out.PAXRecords) > 0 {
			out.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(&out); err != nil {
			return fmt.Errorf("rewriting entry %q: %v: %w", h.Name, err, errdefs.ErrInvalidArgument)
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return fmt.Errorf("rewriting entry %q: %w", h.Name, err)
		}
	}
}

// Read yields the rewritten tar.
func (r *Rewritten) Read(p []byte) (int, error) {
	n, err := r.pr.Read(p)
	r.hash.Write(p[:n])
	return n, err
}

// DiffID is the digest of the rewritten tar read so far.
func (r *Rewritten) DiffID() digest.Digest {
	return digest.NewDigestFromBytes(digest.SHA256, r.hash.Sum(nil))
}

// Hash is a copy of the state of the hash DiffID is (see Source.Hash).
func (r *Rewritten) Hash() (hash.Hash, error) {
	c, err := r.hash.(hash.Cloner).Clone()
	return c, err
}

// Close stops the rewriting.
func (r *Rewritten) Close() error { return r.pr.Close() }
