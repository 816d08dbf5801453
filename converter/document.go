package converter

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ReadDocument reads the JSON blob desc (an index, a manifest, a config)
// from cs into v and returns the blob's labels, as containerd's
// converter.ReadJSON does, within the MaxDocumentBytes limit of ctx: a blob
// whose stored size (the store's own Info, whatever desc claims) is beyond
// it is refused before it is read, and a blob that is not JSON of v's shape
// is refused too, both with ErrInvalidArgument. A missing blob stays
// ErrNotFound.
func ReadDocument(ctx context.Context, cs content.Store, v any, desc ocispec.Descriptor) (map[string]string, error) {
	info, err := cs.Info(ctx, desc.Digest)
	if err != nil {
		return nil, err
	}
	limit := LimitsFrom(ctx).MaxDocumentBytes
	if err := documentSize(info.Size, limit); err != nil {
		return nil, err
	}
	ra, err := cs.ReaderAt(ctx, desc)
	if err != nil {
		return nil, err
	}
	defer ra.Close()
	size := ra.Size()
	if err := documentSize(size, limit); err != nil {
		return nil, err
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(io.NewSectionReader(ra, 0, size), b); err != nil {
		return nil, fmt.Errorf("reading %d bytes: %w", size, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return nil, fmt.Errorf("malformed JSON: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return info.Labels, nil
}

func documentSize(size, limit int64) error {
	if Exceeds(size, limit) {
		return fmt.Errorf("the blob is %d bytes, beyond the limit of %d for an index, manifest or config (max_document_bytes, --max-document-bytes; -1: none): %w",
			size, limit, errdefs.ErrInvalidArgument)
	}
	return nil
}

type indexDepthKey struct{}

// indexDepth is how deep in nested indexes a conversion on ctx is: 0 outside
// any index, 1 within the image's own.
func indexDepth(ctx context.Context) int64 {
	d, _ := ctx.Value(indexDepthKey{}).(int64)
	return d
}

// enterIndex returns the context of an index's children, at one level more,
// or ErrInvalidArgument when that is beyond the MaxIndexDepth limit of ctx.
func enterIndex(ctx context.Context, desc ocispec.Descriptor) (context.Context, int64, error) {
	depth := indexDepth(ctx) + 1
	if limit := LimitsFrom(ctx).MaxIndexDepth; Exceeds(depth, limit) {
		return nil, depth, fmt.Errorf("index %s is nested %d deep, beyond the limit of %d (max_index_depth, --max-index-depth; -1: none): %w",
			desc.Digest, depth, limit, errdefs.ErrInvalidArgument)
	}
	return context.WithValue(ctx, indexDepthKey{}, depth), depth, nil
}
