package recorder

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// MediaType of a record blob in the content store.
const MediaType = "application/vnd.lazyconv.record.v1+jsonl"

// Entry is one recorded access, in stargz-snapshotter's recorder.Entry format.
type Entry struct {
	Path           string `json:"path"`
	ManifestDigest string `json:"manifestDigest,omitempty"`
	LayerIndex     *int   `json:"layerIndex,omitempty"`
}

// Recorder accumulates accessed paths of one image.
type Recorder struct {
	ix      *Index
	entries []Entry
	seen    map[string]bool
}

// New returns a Recorder resolving paths with ix.
func New(ix *Index) *Recorder { return &Recorder{ix: ix, seen: map[string]bool{}} }

// Record notes that p was accessed, in the topmost layer holding it. A
// deleted path, one in no layer, or one leaving the root is an error (and is
// not recorded). Recording a path twice keeps the first.
func (r *Recorder) Record(p string) error {
	layer, err := r.ix.Resolve(p)
	if err != nil {
		return err
	}
	clean, _ := checkPath(p)
	if r.seen[clean] {
		return nil
	}
	r.seen[clean] = true
	r.entries = append(r.entries, Entry{Path: clean, ManifestDigest: r.ix.manifest.String(), LayerIndex: &layer})
	return nil
}

// Entries are the recorded accesses, in recording order.
func (r *Recorder) Entries() []Entry { return append([]Entry(nil), r.entries...) }

// Commit stores the record in the content store (under ctx's lease) and
// returns its descriptor.
func (r *Recorder) Commit(ctx context.Context, cs content.Ingester) (ocispec.Descriptor, error) {
	var b bytes.Buffer
	if err := Write(&b, r.entries); err != nil {
		return ocispec.Descriptor{}, err
	}
	desc := ocispec.Descriptor{MediaType: MediaType, Digest: digest.FromBytes(b.Bytes()), Size: int64(b.Len())}
	if err := content.WriteBlob(ctx, cs, "lazyconv-record-"+desc.Digest.String(), bytes.NewReader(b.Bytes()), desc); err != nil {
		return ocispec.Descriptor{}, err
	}
	return desc, nil
}

// Write writes entries as JSON lines.
func Write(w io.Writer, entries []Entry) error {
	enc := json.NewEncoder(w)
	for _, e := range entries {
		if err := enc.Encode(e); err != nil {
			return err
		}
	}
	return nil
}

// Read parses JSON-lines entries, refusing paths that leave the root.
func Read(r io.Reader) ([]Entry, error) {
	var out []Entry
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var e Entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("record line %d: %v: %w", line, err, errdefs.ErrInvalidArgument)
		}
		clean, err := checkPath(e.Path)
		if err != nil {
			return nil, fmt.Errorf("record line %d: %w", line, err)
		}
		e.Path = clean
		out = append(out, e)
	}
	return out, sc.Err()
}

// Load reads a record from the content store.
func Load(ctx context.Context, cs content.Provider, desc ocispec.Descriptor) ([]Entry, error) {
	b, err := content.ReadBlob(ctx, cs, desc)
	if err != nil {
		return nil, err
	}
	return Read(bytes.NewReader(b))
}

// PerLayer groups entries by layer index for the manifest ix was built from:
// entries with a layer index keep it (those of another manifest are left out),
// the others are resolved with ix (and left out when ix cannot place them).
func PerLayer(ix *Index, entries []Entry) map[int][]string {
	out := map[int][]string{}
	for _, e := range entries {
		if e.ManifestDigest != "" && e.ManifestDigest != ix.manifest.String() {
			continue
		}
		layer := -1
		if e.LayerIndex != nil {
			layer = *e.LayerIndex
		} else if l, err := ix.Resolve(e.Path); err == nil {
			layer = l
		}
		if layer >= 0 && layer < ix.Layers() {
			out[layer] = append(out[layer], e.Path)
		}
	}
	return out
}
