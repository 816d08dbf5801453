package converter

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	nydusconv "github.com/containerd/nydus-snapshotter/pkg/converter"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/labels"
)

// NydusBuilderName is the external builder nydus conversion needs.
const NydusBuilderName = "nydus-image"

// NydusBuilder is what probing for the nydus-image builder found.
type NydusBuilder struct {
	// Path is the builder's path (as configured, or found on PATH).
	Path string
	// Version is the first line of `nydus-image --version`.
	Version string
	// Found is true when the builder ran.
	Found bool
	// Reason says why the builder is not usable, when it is not.
	Reason string
}

// ProbeNydusBuilder looks for the builder at path (or on PATH when path is
// empty) and asks it for its version. It never fails: what it found is in
// the result. Probe once at start; nydus conversion needs a Found builder.
func ProbeNydusBuilder(ctx context.Context, path string) NydusBuilder {
	b := NydusBuilder{Path: path}
	if path == "" {
		found, err := exec.LookPath(NydusBuilderName)
		if err != nil {
			b.Reason = fmt.Sprintf("%s not found on PATH", NydusBuilderName)
			return b
		}
		b.Path = found
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, b.Path, "--version").CombinedOutput()
	if err != nil {
		b.Reason = fmt.Sprintf("%s --version: %v", b.Path, err)
		return b
	}
	b.Version, _, _ = strings.Cut(strings.TrimSpace(string(out)), "\n")
	b.Found = true
	return b
}

// NydusOptions configures nydus conversion.
type NydusOptions struct {
	// Builder is the probed nydus-image builder.
	Builder NydusBuilder
	// WorkDir is the builder's work directory ("" for a temporary one).
	WorkDir string
	// FsVersion is the RAFS version, "6" (default) or "5".
	FsVersion string
	// Compressor is the blob compressor: "zstd" (default), "lz4_block" or "none".
	Compressor string
	// PrefetchPatterns lists paths to prefetch, one per line.
	PrefetchPatterns string
}

func (o *NydusOptions) validate() error {
	if !o.Builder.Found {
		reason := o.Builder.Reason
		if reason == "" {
			reason = NydusBuilderName + " was not probed"
		}
		return fmt.Errorf("nydus conversion needs the %s builder (%s): install it or set its path: %w",
			NydusBuilderName, reason, errdefs.ErrUnavailable)
	}
	if o.FsVersion == "" {
		o.FsVersion = "6"
	}
	if o.FsVersion != "5" && o.FsVersion != "6" {
		return fmt.Errorf("nydus fs version %q is not 5 or 6: %w", o.FsVersion, errdefs.ErrInvalidArgument)
	}
	if o.Compressor == "" {
		o.Compressor = "zstd"
	}
	switch o.Compressor {
	case "zstd", "lz4_block", "none":
	default:
		return fmt.Errorf("nydus compressor %q is not zstd, lz4_block or none: %w", o.Compressor, errdefs.ErrInvalidArgument)
	}
	return nil
}

type nydusConverter struct{ opts NydusOptions }

// NewNydus returns the nydus layer converter, which packs each layer into a
// nydus blob with the external nydus-image builder (through nydus-snapshotter's
// converter library). Without a builder it fails at once with ErrUnavailable,
// before any work, and never emits a non-nydus layer under a nydus media type.
// An image conversion also needs NydusMergeHook to add the merged bootstrap.
func NewNydus(opts NydusOptions) (LayerConverter, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	return &nydusConverter{opts: opts}, nil
}

// Variant is "nydus", qualified by non-default options.
func (c *nydusConverter) Variant() string {
	opts := map[string]string{}
	if c.opts.FsVersion != "6" {
		opts["fs"] = c.opts.FsVersion
	}
	if c.opts.Compressor != "zstd" {
		opts["compressor"] = c.opts.Compressor
	}
	if c.opts.PrefetchPatterns != "" {
		opts["prefetch"] = digest.FromString(c.opts.PrefetchPatterns).Encoded()[:12]
	}
	return labels.VariantName("nydus", opts)
}

// MediaType is the nydus blob type, whatever the source.
func (c *nydusConverter) MediaType(string) string { return nydusconv.MediaTypeNydusBlob }

// Keep keeps nydus blobs and bootstraps.
func (c *nydusConverter) Keep(_ context.Context, _ content.Store, desc ocispec.Descriptor) (*ocispec.Descriptor, map[string]string, error) {
	if nydusconv.IsNydusBlob(desc) || nydusconv.IsNydusBootstrap(desc) {
		return &desc, nil, nil
	}
	if _, err := LayerCompression(desc.MediaType); err != nil {
		return nil, nil, err
	}
	return nil, nil, nil
}

// Convert packs the layer with the builder.
func (c *nydusConverter) Convert(ctx context.Context, cs content.Store, desc ocispec.Descriptor, counters Counters) (Converted, error) {
	pack := nydusconv.LayerConvertFunc(nydusconv.PackOption{
		WorkDir:          c.opts.WorkDir,
		BuilderPath:      c.opts.Builder.Path,
		FsVersion:        c.opts.FsVersion,
		Compressor:       c.opts.Compressor,
		PrefetchPatterns: c.opts.PrefetchPatterns,
	})
	out, err := pack(ctx, cs, desc)
	if err != nil {
		return Converted{}, err
	}
	if out == nil || out.MediaType != nydusconv.MediaTypeNydusBlob {
		return Converted{}, fmt.Errorf("the nydus builder produced no nydus blob: %w", errdefs.ErrUnknown)
	}
	if counters.In != nil {
		counters.In.Add(desc.Size)
	}
	if counters.Out != nil {
		counters.Out.Add(out.Size)
	}
	// Record the annotations for cache hits, as every variant does.
	set := map[string]string{}
	labels.AnnotationsToLabels(out.Annotations, set)
	if err := setLabels(ctx, cs, out.Digest, set); err != nil {
		return Converted{}, err
	}
	// A nydus blob's diffID is its own digest (nydus-snapshotter's convention).
	return Converted{Desc: *out, DiffID: out.Digest}, nil
}

// NydusMergeHook returns the image-level step of nydus conversion: once a
// manifest's layers are nydus blobs, the builder merges their bootstraps into
// one, stored gzip'd (with its uncompressed label and the nydus bootstrap
// annotation) under the conversion's lease and appended as the last layer.
func NydusMergeHook(opts NydusOptions) (AppendLayerFunc, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	return func(ctx context.Context, cs content.Store, layers []ocispec.Descriptor, oci bool) (*ocispec.Descriptor, digest.Digest, error) {
		var blobs []ocispec.Descriptor
		for _, l := range layers {
			if nydusconv.IsNydusBootstrap(l) {
				continue // merging again: the old bootstrap is replaced
			}
			if !nydusconv.IsNydusBlob(l) {
				return nil, "", fmt.Errorf("layer %s (%s) is not a nydus blob: %w", l.Digest, l.MediaType, errdefs.ErrInvalidArgument)
			}
			blobs = append(blobs, l)
		}
		if len(blobs) == 0 {
			return nil, "", errors.New("no nydus blob to merge")
		}
		boot, _, err := nydusconv.MergeLayers(ctx, cs, blobs, nydusconv.MergeOption{
			WorkDir:          opts.WorkDir,
			BuilderPath:      opts.Builder.Path,
			FsVersion:        opts.FsVersion,
			PrefetchPatterns: opts.PrefetchPatterns,
			OCI:              oci,
		})
		if err != nil {
			return nil, "", fmt.Errorf("merging nydus bootstraps: %w", err)
		}
		diffID, err := digest.Parse(boot.Annotations[labels.Uncompressed])
		if err != nil {
			return nil, "", fmt.Errorf("merged bootstrap has no uncompressed digest: %w", errdefs.ErrUnknown)
		}
		return boot, diffID, nil
	}, nil
}

func setLabels(ctx context.Context, cs content.Store, d digest.Digest, set map[string]string) error {
	fields := make([]string, 0, len(set))
	for k := range set {
		fields = append(fields, "labels."+k)
	}
	if _, err := cs.Update(ctx, content.Info{Digest: d, Labels: set}, fields...); err != nil {
		return fmt.Errorf("labelling %s: %w", d, err)
	}
	return nil
}
