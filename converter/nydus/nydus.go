// Package nydus converts layers to nydus (RAFS) blobs and merges their
// bootstraps, through nydus-snapshotter's converter library and the external
// nydus-image builder, which is probed lazily and once (see Probe).
package nydus

import (
	"context"
	"errors"
	"fmt"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	nydusconv "github.com/containerd/nydus-snapshotter/pkg/converter"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/options"
	"github.com/lazyconv/lazyconv/labels"
)

// Options configures nydus conversion (see package options for the tags).
type Options struct {
	// BuilderPath is the nydus-image builder ("": found on PATH). The
	// service runs it with its own privileges, so only its configuration
	// sets it.
	BuilderPath string `option:"builder-path" variant:"-" scope:"service" usage:"nydus-image builder (embedded mode; a daemon uses its configured one)"`
	// WorkDir is the builder's work directory ("": a temporary one).
	WorkDir string `option:"work-dir" variant:"-" scope:"service" usage:"nydus builder work directory (embedded mode)"`
	// FsVersion is the RAFS version, "6" (default, EROFS-compatible) or "5".
	FsVersion string `option:"fs-version" variant:"fs" usage:"RAFS version: 6 or 5"`
	// Compressor is the blob compressor: "zstd" (default), "lz4_block" or "none".
	Compressor string `option:"compressor" variant:"compressor" usage:"nydus blob compressor: zstd, lz4_block or none"`
	// PrefetchPatterns lists paths to prefetch, one per line.
	PrefetchPatterns string `option:"prefetch-patterns" variant:"prefetch" usage:"paths to prefetch, one per line"`
}

// DefaultOptions are the options a request that sets none gets.
func DefaultOptions() Options { return Options{FsVersion: "6", Compressor: "zstd"} }

// Validate reports a bad option with ErrInvalidArgument. It does not look
// for the builder (Available does).
func (o Options) Validate() error {
	if o.FsVersion != "5" && o.FsVersion != "6" {
		return fmt.Errorf("nydus fs version %q is not 5 or 6: %w", o.FsVersion, errdefs.ErrInvalidArgument)
	}
	switch o.Compressor {
	case "zstd", "lz4_block", "none":
	default:
		return fmt.Errorf("nydus compressor %q is not zstd, lz4_block or none: %w", o.Compressor, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Available probes for the builder (once per path, see Probe) and returns
// ErrUnavailable naming it when it cannot run.
func (o Options) Available(ctx context.Context) (Builder, error) {
	b := Probe(ctx, o.BuilderPath)
	if !b.Found {
		return b, fmt.Errorf("nydus conversion needs the %s builder (%s): install it or set its path: %w",
			BuilderName, b.Reason, errdefs.ErrUnavailable)
	}
	return b, nil
}

// ready validates the options and finds the builder.
func (o Options) ready() (Builder, error) {
	if err := o.Validate(); err != nil {
		return Builder{}, err
	}
	return o.Available(context.Background())
}

type nydusConverter struct {
	opts    Options
	builder Builder
	variant string
}

// New returns the nydus layer converter, which packs each layer into a
// nydus blob with the external nydus-image builder (through nydus-snapshotter's
// converter library). Without a builder it fails at once with ErrUnavailable,
// before any work, and never emits a non-nydus layer under a nydus media type.
// An image conversion also needs MergeHook to add the merged bootstrap.
func New(o Options) (converter.LayerConverter, error) {
	b, err := o.ready()
	if err != nil {
		return nil, err
	}
	return &nydusConverter{opts: o, builder: b, variant: options.Variant("nydus", o, DefaultOptions())}, nil
}

// Variant is "nydus", qualified by non-default options.
func (c *nydusConverter) Variant() string { return c.variant }

// MediaType is the nydus blob type, whatever the source.
func (c *nydusConverter) MediaType(string) string { return nydusconv.MediaTypeNydusBlob }

// Keep keeps nydus blobs and bootstraps.
func (c *nydusConverter) Keep(_ context.Context, _ content.Store, desc ocispec.Descriptor) (*ocispec.Descriptor, map[string]string, error) {
	if nydusconv.IsNydusBlob(desc) || nydusconv.IsNydusBootstrap(desc) {
		return &desc, nil, nil
	}
	if _, err := converter.LayerCompression(desc.MediaType); err != nil {
		return nil, nil, err
	}
	return nil, nil, nil
}

// Convert packs the layer with the builder.
func (c *nydusConverter) Convert(ctx context.Context, cs content.Store, desc ocispec.Descriptor, counters converter.Counters) (converter.Output, error) {
	pack := nydusconv.LayerConvertFunc(nydusconv.PackOption{
		WorkDir:          c.opts.WorkDir,
		BuilderPath:      c.builder.Path,
		FsVersion:        c.opts.FsVersion,
		Compressor:       c.opts.Compressor,
		PrefetchPatterns: c.opts.PrefetchPatterns,
	})
	out, err := pack(ctx, cs, desc)
	if err != nil {
		return converter.Output{}, err
	}
	if out == nil || out.MediaType != nydusconv.MediaTypeNydusBlob {
		return converter.Output{}, fmt.Errorf("the nydus builder produced no nydus blob: %w", errdefs.ErrUnknown)
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
	if err := labels.Set(ctx, cs, out.Digest, set); err != nil {
		return converter.Output{}, err
	}
	// A nydus blob's diffID is its own digest (nydus-snapshotter's convention).
	return converter.Output{Desc: *out, DiffID: out.Digest}, nil
}

// MergeHook returns the image-level step of nydus conversion: once a
// manifest's layers are nydus blobs, the builder merges their bootstraps into
// one, stored gzip'd (with its uncompressed label and the nydus bootstrap
// annotation) under the conversion's lease and appended as the last layer.
func MergeHook(opts Options) (converter.AppendLayerFunc, error) {
	b, err := opts.ready()
	if err != nil {
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
			BuilderPath:      b.Path,
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
