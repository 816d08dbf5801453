package converter

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// LayerConverter converts one layer blob to one format. Implementations live
// in their format's package (converter/stargz, converter/nydus,
// converter/recompress), are stateless and safe for concurrent use, and pass
// the conformance suite in converter/convertertest; the Converter adds
// caching, de-duplication, bounded workers and leases around them.
type LayerConverter interface {
	// Variant names the output format with its non-default options. It keys
	// the variant cache (a label on the source) and de-duplication, so two
	// converters with the same Variant must produce the same blob. Derive it
	// with options.Variant from the format's options struct.
	Variant() string
	// Keep inspects the source and returns the descriptor to use unchanged when
	// the layer already is in the target format (nil when it must be
	// converted), plus labels learnt about the source, to be cached on it once
	// the conversion succeeds.
	Keep(ctx context.Context, cs content.Store, desc ocispec.Descriptor) (keep *ocispec.Descriptor, learnt map[string]string, err error)
	// Convert writes the converted blob to cs under ctx's lease. Bad input is
	// ErrInvalidArgument, and leaves no ingest and no blob behind.
	Convert(ctx context.Context, cs content.Store, desc ocispec.Descriptor, counters Counters) (Output, error)
	// MediaType is the media type of the variant of a source of srcMediaType.
	MediaType(srcMediaType string) string
}

// Counters receive the bytes a conversion reads and writes, for progress.
// Either may be nil.
type Counters struct {
	In, Out *atomic.Int64
}

// Output is the blob LayerConverter.Convert wrote.
type Output struct {
	// Desc describes the new blob, annotations included.
	Desc ocispec.Descriptor
	// DiffID is the new blob's uncompressed digest.
	DiffID digest.Digest
	// SourceDiffID is the source's uncompressed digest, when the conversion
	// computed it on the way ("" otherwise).
	SourceDiffID digest.Digest
	// NotLossless names the entries the output does not carry byte for byte
	// (sparse files written as regular files); empty for a lossless layer.
	// Desc then carries labels.NotLosslessAnnotation.
	NotLossless []string
}

// NotLosslessText is the labels.NotLosslessAnnotation value for entries:
// what was rewritten, naming at most ten entries.
func NotLosslessText(entries []string) string {
	const shown = 10
	text := "sparse files written as regular files: " + strings.Join(entries[:min(len(entries), shown)], ", ")
	if len(entries) > shown {
		text += fmt.Sprintf(" (and %d more)", len(entries)-shown)
	}
	return text
}

// LayerPlan picks the converter of each layer of an image: index counts the
// manifest's layers from the bottom (0). A nil LayerConverter leaves the
// layer as it is.
type LayerPlan func(manifest ocispec.Descriptor, index int, layer ocispec.Descriptor) (LayerConverter, error)

// Every is the plan that converts every layer with lc.
func Every(lc LayerConverter) LayerPlan {
	return func(ocispec.Descriptor, int, ocispec.Descriptor) (LayerConverter, error) { return lc, nil }
}
