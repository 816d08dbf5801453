package converter

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	ctdconverter "github.com/containerd/containerd/v2/core/images/converter"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/lazyconv/lazyconv/labels"
)

// ImageOptions configures ConvertImage.
type ImageOptions struct {
	// Layers picks each layer's converter (Every(lc) for one converter for
	// all); nil converts only media types (with DockerToOCI).
	Layers LayerPlan
	// DockerToOCI rewrites Docker media types as OCI ones.
	DockerToOCI bool
	// Platforms selects the manifests of an index to keep; nil keeps all.
	Platforms platforms.MatchComparer
	// Progress, if set, receives every layer's progress.
	Progress *Progress
	// RequireLossless refuses a layer the format cannot carry byte for byte
	// (a sparse file), with ErrInvalidArgument naming its entries, instead
	// of converting it with those entries rewritten.
	RequireLossless bool
	// Limits bound what each layer may make the conversion hold (zero
	// fields: DefaultLimits).
	Limits Limits
	// AppendLayer, if set, runs once a manifest's layers are converted and
	// returns a layer to append to it, with its diffID (nydus's merged
	// bootstrap).
	AppendLayer AppendLayerFunc
	// Finish, if set, runs on the converted image's target before it is
	// stored, writing to cs under ctx's lease, and returns the target to
	// store in its place (SOCI binds its indexes into a new image index).
	Finish FinishFunc
	// Manifests, if set, converts every image manifest with a format that
	// keeps the layers and adds to the manifest (Layers and AppendLayer
	// are then unused).
	Manifests ManifestFormat
	// Shared, if set, is asked for a manifest's conversion published in a
	// registry (by another node) before any of its layers is converted; a
	// conversion it finds is adopted only if the manifest rebuilt from the
	// source with its layers is the one published. Its errors are warnings:
	// the image is then converted here.
	Shared SharedConversions
	// EnsureLayer, if set, makes a layer local before it is converted: it
	// returns the blob to convert in its place, which is the layer itself
	// unless the layer is missing and was rebuilt (from a snapshot).
	// manifest lists the layer at index; report tells the layer's progress
	// when it is fetched or rebuilt (it stays queued otherwise).
	EnsureLayer func(ctx context.Context, layer, manifest ocispec.Descriptor, index int, report LayerReport) (Ensured, error)
	// SourceDigest, if set, pins the source: the image is converted only if
	// its name points at this target digest when the conversion starts, and
	// the target is stored only if it still does once the conversion is
	// done; otherwise the conversion fails with ErrSourceMoved and stores
	// nothing (what it wrote goes with its lease). Rules convert what they
	// resolved, never whatever the name has come to mean since.
	SourceDigest digest.Digest
	// TargetLabels, if not nil, are the target's labels (with
	// labels.ImageConvertedFrom), in place of the source's.
	TargetLabels map[string]string
}

// ErrSourceMoved is the error of a pinned conversion (ImageOptions.SourceDigest)
// whose source name has come to point at another digest, or was deleted.
var ErrSourceMoved = fmt.Errorf("the source image moved on: %w", errdefs.ErrAborted)

// LayerReport lets an EnsureLayer hook say what it does for a layer.
type LayerReport struct{ lp *layerProgress }

// Fetching marks the layer as coming from its registry, and returns the
// counter of the bytes fetched.
func (r LayerReport) Fetching() *atomic.Int64 {
	r.lp.set(StateFetching)
	return &r.lp.in
}

// Rebuilding marks the layer as being rebuilt from its snapshot.
func (r LayerReport) Rebuilding() { r.lp.set(StateRebuilding) }

// Ensured is where a layer to convert comes from.
type Ensured struct {
	// Desc is the blob to convert: the layer, or the blob rebuilt for it.
	Desc ocispec.Descriptor
	// Origin is "" for the content store, else OriginSnapshot or OriginRegistry.
	Origin string
}

// Origins of a layer that was not in the content store.
const (
	// OriginSnapshot: rebuilt from the snapshot containerd unpacked it into
	// (the same files, not the original tar bytes).
	OriginSnapshot = "snapshot"
	// OriginRegistry: fetched from the image's registry.
	OriginRegistry = "registry"
)

// FinishFunc returns the target to store for a converted image's target.
type FinishFunc func(ctx context.Context, cs content.Store, target ocispec.Descriptor) (ocispec.Descriptor, error)

// AppendLayerFunc returns a layer to append to a manifest whose (converted)
// layers are given, written to cs under ctx's lease, and its diffID.
type AppendLayerFunc func(ctx context.Context, cs content.Store, layers []ocispec.Descriptor, oci bool) (*ocispec.Descriptor, digest.Digest, error)

// ImageResult is a converted image and what happened to each of its layers.
type ImageResult struct {
	Image  images.Image
	Layers []LayerResult
	// Shared lists the manifests adopted from conversions published in a
	// registry: source manifest digest -> where it was found.
	Shared map[digest.Digest]string
	// Warnings say what went wrong without failing the conversion.
	Warnings []string
}

// ConvertImage converts the image srcRef into dstRef (which may be the same
// name): index, manifests and configs through containerd's converter helpers,
// every layer of every manifest through ConvertLayer on bounded workers.
// Everything is written under a lease (ctx's, or one made for the call), and
// variants are linked to their sources only once the image is stored, so an
// interrupted conversion leaves nothing that outlives its lease.
func (c *Converter) ConvertImage(ctx context.Context, is images.Store, srcRef, dstRef string, opts ImageOptions) (*ImageResult, error) {
	if _, ok := leases.FromContext(ctx); !ok {
		l, err := c.lm.Create(ctx, leases.WithRandomID(), leases.WithExpiration(24*time.Hour),
			leases.WithLabel(labels.LeaseConverting, srcRef))
		if err != nil {
			return nil, fmt.Errorf("creating lease: %w", err)
		}
		defer c.lm.Delete(context.WithoutCancel(ctx), l) //nolint:errcheck // expires anyway
		ctx = leases.WithLease(ctx, l.ID)
	}
	if opts.Platforms == nil {
		opts.Platforms = platforms.All
	}
	ctx = WithLimits(ctx, opts.Limits)
	src, err := is.Get(ctx, srcRef)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", srcRef, err)
	}
	if opts.SourceDigest != "" && src.Target.Digest != opts.SourceDigest {
		return nil, fmt.Errorf("%s is %s, not %s: %w", srcRef, src.Target.Digest, opts.SourceDigest, ErrSourceMoved)
	}
	// The source is held under the lease from now on: its target, and through
	// the GC references of its blobs the whole image (kept layers, unchanged
	// configs, cached variants), so that deleting the image mid-conversion
	// (kubelet's image GC) cannot take what the target is about to name.
	id, _ := leases.FromContext(ctx)
	if err := c.lm.AddResource(ctx, leases.Lease{ID: id}, leases.Resource{ID: src.Target.Digest.String(), Type: "content"}); err != nil {
		return nil, fmt.Errorf("holding %s under the conversion's lease: %w", srcRef, err)
	}
	w := &imageWalk{c: c, opts: opts, done: map[digest.Digest]*manifestOnce{}, shared: map[digest.Digest]string{}}
	target, err := w.convert(ctx, src.Target)
	if err != nil {
		return nil, err
	}
	if opts.Finish != nil {
		cur := src.Target
		if target != nil {
			cur = *target
		}
		finished, err := opts.Finish(ctx, c.cs, cur)
		if err != nil {
			return nil, err
		}
		target = &finished
	}
	dst := src
	dst.Name = dstRef
	if target != nil {
		dst.Target = *target
	}
	// Labelled as lazyconv's, so that converting onto it again needs no overwrite.
	// A new target takes the source's labels but those about the source
	// image itself: lazyconv's own, a rule's failure, CRI's pin.
	dst.Labels = map[string]string{labels.ImageConvertedFrom: srcRef}
	fields := []string{"target", "labels." + labels.ImageConvertedFrom}
	if opts.TargetLabels != nil {
		maps.Copy(dst.Labels, opts.TargetLabels)
		dst.Labels[labels.ImageConvertedFrom] = srcRef
		fields = []string{"target", "labels"}
	} else {
		for k, v := range src.Labels {
			switch {
			case k == labels.ImageConvertedFrom, k == labels.RuleFailed, k == labels.CRIPinned, k == labels.Temporary,
				strings.HasPrefix(k, labels.RuleFailedDigestPrefix):
			default:
				dst.Labels[k] = v
			}
		}
	}
	if opts.SourceDigest != "" {
		// The last check before the store: an event for the name that moves
		// it after this queues the newer digest behind this job.
		now, err := is.Get(ctx, srcRef)
		if err != nil || now.Target.Digest != opts.SourceDigest {
			at := "deleted"
			if err == nil {
				at = now.Target.Digest.String()
			}
			return nil, fmt.Errorf("%s is %s, not the converted %s: %w", srcRef, at, opts.SourceDigest, ErrSourceMoved)
		}
	}
	img, err := is.Update(ctx, dst, fields...)
	if errdefs.IsNotFound(err) && dstRef != srcRef {
		dst.CreatedAt, dst.UpdatedAt = time.Time{}, time.Time{}
		img, err = is.Create(ctx, dst)
	}
	if err != nil {
		return nil, fmt.Errorf("storing image %q: %w", dstRef, err)
	}
	if err := c.Link(ctx, w.layers...); err != nil {
		return nil, err
	}
	return &ImageResult{Image: img, Layers: w.layers, Shared: w.shared, Warnings: w.warnings}, nil
}

type imageWalk struct {
	c      *Converter
	opts   ImageOptions
	mu     sync.Mutex
	layers []LayerResult
	done   map[digest.Digest]*manifestOnce
	// shared: source manifest -> where its adopted conversion was found.
	shared   map[digest.Digest]string
	warnings []string
	// indexes converts each index once per depth (indexVisit -> *manifestOnce):
	// an index listing another many times, at many levels, costs one
	// conversion per level, not a product of their lengths.
	indexes sync.Map
}

// indexVisit is an index at a depth of nesting.
type indexVisit struct {
	digest digest.Digest
	depth  int64
}

// manifestOnce converts a manifest once even when an index lists it twice.
type manifestOnce struct {
	once sync.Once
	desc *ocispec.Descriptor
	err  error
}

// convert returns the converted descriptor, or nil when desc is unchanged.
func (w *imageWalk) convert(ctx context.Context, desc ocispec.Descriptor) (*ocispec.Descriptor, error) {
	var (
		out *ocispec.Descriptor
		err error
	)
	switch {
	case images.IsIndexType(desc.MediaType):
		out, err = w.convertIndex(ctx, desc)
	case images.IsManifestType(desc.MediaType):
		w.mu.Lock()
		m, ok := w.done[desc.Digest]
		if !ok {
			m = &manifestOnce{}
			w.done[desc.Digest] = m
		}
		w.mu.Unlock()
		m.once.Do(func() { m.desc, m.err = w.convertManifest(ctx, desc) })
		out, err = m.desc, m.err
		if out != nil {
			cp := *out
			cp.Platform, cp.Annotations = desc.Platform, desc.Annotations
			out = &cp
		}
	default:
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return w.retype(desc, out), nil
}

// retype applies DockerToOCI to a descriptor, changed (out) or not (out nil):
// Docker descriptors become OCI ones, or lose their annotations, which Docker
// manifests cannot carry. It returns nil when nothing changed.
func (w *imageWalk) retype(orig ocispec.Descriptor, out *ocispec.Descriptor) *ocispec.Descriptor {
	if !images.IsDockerType(orig.MediaType) {
		return out
	}
	cur := orig
	if out != nil {
		cur = *out
	}
	switch {
	case w.opts.DockerToOCI:
		cur.MediaType = ctdconverter.ConvertDockerMediaTypeToOCI(cur.MediaType)
	case len(cur.Annotations) > 0:
		cur.Annotations = nil
	default:
		return out
	}
	return &cur
}

// convertIndex converts an index, once per depth of nesting whoever lists
// it, refusing one nested beyond MaxIndexDepth before reading it.
func (w *imageWalk) convertIndex(ctx context.Context, desc ocispec.Descriptor) (*ocispec.Descriptor, error) {
	ctx, depth, err := enterIndex(ctx, desc)
	if err != nil {
		return nil, err
	}
	v, _ := w.indexes.LoadOrStore(indexVisit{desc.Digest, depth}, &manifestOnce{})
	m := v.(*manifestOnce)
	m.once.Do(func() { m.desc, m.err = w.convertIndexOnce(ctx, desc) })
	if m.err != nil || m.desc == nil {
		return nil, m.err
	}
	// The descriptor of whoever lists it, with the new blob.
	out := desc
	out.Digest, out.Size = m.desc.Digest, m.desc.Size
	return &out, nil
}

func (w *imageWalk) convertIndexOnce(ctx context.Context, desc ocispec.Descriptor) (*ocispec.Descriptor, error) {
	var index ocispec.Index
	lbls, err := ReadDocument(ctx, w.c.cs, &index, desc)
	if err != nil {
		return nil, fmt.Errorf("reading index %s: %w", desc.Digest, err)
	}
	modified := false
	if images.IsDockerType(index.MediaType) && w.opts.DockerToOCI {
		index.MediaType = ctdconverter.ConvertDockerMediaTypeToOCI(index.MediaType)
		modified = true
	}
	results := make([]*ocispec.Descriptor, len(index.Manifests))
	keep := make([]bool, len(index.Manifests))
	eg, egCtx := errgroup.WithContext(ctx)
	for i, m := range index.Manifests {
		if m.Platform != nil && !w.opts.Platforms.Match(*m.Platform) {
			modified = true
			continue
		}
		keep[i] = true
		eg.Go(func() error {
			out, err := w.convert(egCtx, m)
			results[i] = out
			return err
		})
	}
	if err := eg.Wait(); err != nil {
		return nil, err
	}
	var manifests []ocispec.Descriptor
	for i, m := range index.Manifests {
		if !keep[i] {
			continue
		}
		if results[i] != nil {
			m, modified = *results[i], true
		}
		manifests = append(manifests, m)
	}
	if len(manifests) == 0 {
		return nil, fmt.Errorf("index %s has no manifest for the requested platforms: %w", desc.Digest, errdefs.ErrNotFound)
	}
	if !modified {
		return nil, nil
	}
	index.Manifests = manifests
	lbls = childLabels(lbls, "m", manifests)
	return ctdconverter.WriteJSON(ctx, w.c.cs, &index, desc, lbls)
}

func (w *imageWalk) convertManifest(ctx context.Context, desc ocispec.Descriptor) (*ocispec.Descriptor, error) {
	var manifest ocispec.Manifest
	lbls, err := ReadDocument(ctx, w.c.cs, &manifest, desc)
	if err != nil {
		return nil, fmt.Errorf("reading manifest %s: %w", desc.Digest, err)
	}
	modified := false
	if images.IsDockerType(manifest.MediaType) && w.opts.DockerToOCI {
		manifest.MediaType = ctdconverter.ConvertDockerMediaTypeToOCI(manifest.MediaType)
		modified = true
	}
	if !isImageManifest(manifest, desc) {
		// An artifact (or an attestation): its layers are no filesystem
		// layers to convert; they pass through and are reported kept.
		w.keepAll(manifest.Layers)
		return w.retype(desc, nil), nil
	}
	converters := make([]LayerConverter, len(manifest.Layers))
	positions := make([]int, len(manifest.Layers))
	pos := 0
	for i, l := range manifest.Layers {
		if !images.IsLayerType(l.MediaType) {
			return nil, fmt.Errorf("manifest %s: layer %d (%s) has media type %q, which is no layer type: %w",
				desc.Digest, i, l.Digest, l.MediaType, errdefs.ErrInvalidArgument)
		}
		if w.opts.Manifests != nil {
			continue
		}
		positions[i] = pos
		if w.opts.Layers != nil {
			lc, err := w.opts.Layers(desc, pos, l)
			if err != nil {
				return nil, err
			}
			converters[i] = lc
		}
		pos++
	}
	if w.opts.Manifests != nil {
		return w.annotateManifest(ctx, desc, manifest, lbls, modified)
	}
	if w.opts.Layers == nil {
		return w.finish(ctx, desc, manifest, lbls, make([]*LayerResult, len(manifest.Layers)), modified, "")
	}
	configDiffIDs, err := w.diffIDs(ctx, manifest.Config, pos)
	if err != nil {
		return nil, err
	}
	p := w.opts.Progress
	for _, l := range manifest.Layers {
		p.layer(l.Digest, l.Size) // queued, in manifest order
	}
	variant := sharedVariant(converters)
	if w.opts.Shared != nil && w.opts.AppendLayer == nil && variant != "" && !w.allCached(ctx, manifest.Layers, variant) {
		if out, ok := w.fromShared(ctx, desc, manifest, lbls, modified, converters, positions, configDiffIDs, variant); ok {
			return out, nil
		}
	}
	results := make([]*LayerResult, len(manifest.Layers))
	eg, egCtx := errgroup.WithContext(ctx)
	for i, l := range manifest.Layers {
		if converters[i] == nil {
			continue
		}
		eg.Go(func() error {
			lp := p.layer(l.Digest, l.Size)
			src := Ensured{Desc: l}
			if w.opts.EnsureLayer != nil {
				var err error
				if src, err = w.opts.EnsureLayer(egCtx, l, desc, positions[i], LayerReport{lp: lp}); err != nil {
					lp.set(StateFailed)
					return err
				}
				if src.Origin != "" {
					lp.in.Store(0)
					lp.set(StateQueued) // until a worker takes it
					lp.setOrigin(src.Origin)
				}
			}
			r, err := w.c.convertTracked(egCtx, converters[i], src.Desc, lp)
			if err != nil {
				return err
			}
			r.Origin = src.Origin
			// A rebuilt layer has its own bytes; containerd checked the
			// snapshot it comes from against the config when it unpacked.
			if want := configDiffIDs[positions[i]]; src.Origin != OriginSnapshot && r.SourceDiffID != "" && r.SourceDiffID != want {
				lp.set(StateFailed)
				return fmt.Errorf("layer %s is %s uncompressed, but config %s says diff_ids[%d] is %s: %w",
					l.Digest, r.SourceDiffID, manifest.Config.Digest, positions[i], want, errdefs.ErrInvalidArgument)
			}
			if err := w.checkLossless(l, r.NotLossless); err != nil {
				lp.set(StateFailed)
				return err
			}
			results[i] = &r
			return nil
		})
	}
	if err := eg.Wait(); err != nil {
		return nil, err
	}
	return w.finish(ctx, desc, manifest, lbls, results, modified, variant)
}

// checkLossless refuses a layer that is not lossless when lossless
// conversion is required.
func (w *imageWalk) checkLossless(l ocispec.Descriptor, notLossless []string) error {
	if w.opts.RequireLossless && len(notLossless) > 0 {
		return fmt.Errorf("layer %s cannot be converted losslessly (%s), and lossless conversion is required: %w",
			l.Digest, strings.Join(notLossless, "; "), errdefs.ErrInvalidArgument)
	}
	return nil
}

// finish records a manifest's layer results and writes the manifest with
// its converted layers and config (nil when nothing changed).
func (w *imageWalk) finish(ctx context.Context, desc ocispec.Descriptor, manifest ocispec.Manifest, lbls map[string]string, results []*LayerResult, modified bool, variant string) (*ocispec.Descriptor, error) {
	out, layers, err := w.assemble(ctx, desc, manifest, lbls, results, modified, variant)
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	w.layers = append(w.layers, layers...)
	w.mu.Unlock()
	return out, nil
}

// assemble writes the manifest desc with the layers of results (nil: the
// layer as it is) and a config with their diffIDs, labelled as a conversion
// of desc to variant; it returns the new manifest (nil when nothing changed)
// and the layers' results. manifest is modified.
func (w *imageWalk) assemble(ctx context.Context, desc ocispec.Descriptor, manifest ocispec.Manifest, lbls map[string]string, results []*LayerResult, modified bool, variant string) (*ocispec.Descriptor, []LayerResult, error) {
	var layers []LayerResult
	var err error
	changedDiffIDs := map[int]digest.Digest{} // position among layer blobs -> new diffID
	pos := 0
	for i, l := range manifest.Layers {
		if !images.IsLayerType(l.MediaType) {
			continue
		}
		if r := results[i]; r != nil {
			layers = append(layers, *r)
			if r.Desc.Digest != l.Digest || !maps.Equal(r.Desc.Annotations, l.Annotations) {
				manifest.Layers[i] = r.Desc
				modified = true
			}
			if r.Desc.Digest != l.Digest {
				diffID := r.DiffID
				if diffID == "" {
					// A variant made elsewhere (BuildKit's, say) may lack its label.
					if diffID, err = w.c.diffPairs.DiffID(ctx, r.Desc); err != nil {
						return nil, nil, err
					}
				}
				changedDiffIDs[pos] = diffID
			}
		}
		pos++
	}
	for i, l := range manifest.Layers {
		if out := w.retype(l, nil); out != nil {
			manifest.Layers[i] = *out
			modified = true
		}
	}
	var appended []digest.Digest
	if w.opts.AppendLayer != nil {
		oci := !images.IsDockerType(manifest.MediaType)
		extra, diffID, err := w.opts.AppendLayer(ctx, w.c.cs, manifest.Layers, oci)
		if err != nil {
			return nil, nil, err
		}
		manifest.Layers = append(manifest.Layers, *extra)
		appended = append(appended, diffID)
		modified = true
	}
	newConfig, err := w.convertConfig(ctx, manifest.Config, changedDiffIDs, pos, appended)
	if err != nil {
		return nil, nil, err
	}
	if newConfig != nil {
		manifest.Config = *newConfig
		modified = true
	}
	if !modified {
		return nil, layers, nil
	}
	lbls = childLabels(lbls, "l", manifest.Layers)
	lbls["containerd.io/gc.ref.content.config"] = manifest.Config.Digest.String()
	delete(lbls, labels.ConvertedFrom)
	delete(lbls, labels.ConvertedVariant)
	if variant != "" {
		lbls[labels.ConvertedFrom] = desc.Digest.String()
		lbls[labels.ConvertedVariant] = variant
	}
	out, err := ctdconverter.WriteJSON(ctx, w.c.cs, &manifest, desc, lbls)
	if err == nil && variant != "" {
		// Made (or rebuilt) here: whatever adopted it unread before, it is
		// now a conversion of this node's own.
		err = labels.Set(ctx, w.c.cs, out.Digest, map[string]string{labels.AdoptedUnverified: ""})
	}
	return out, layers, err
}

// isImageManifest tells a filesystem image from an artifact: its config is
// an image config, and it is no attestation (BuildKit's attestation
// manifests have an image config type but in-toto layers).
func isImageManifest(m ocispec.Manifest, desc ocispec.Descriptor) bool {
	if desc.Annotations["vnd.docker.reference.type"] == "attestation-manifest" {
		return false
	}
	switch m.Config.MediaType {
	case ocispec.MediaTypeImageConfig, images.MediaTypeDockerSchema2Config:
		return true
	}
	return false
}

// keepAll reports layers that pass through unchanged.
func (w *imageWalk) keepAll(layers []ocispec.Descriptor) {
	for _, l := range layers {
		w.opts.Progress.layer(l.Digest, l.Size).set(StateKept)
		w.mu.Lock()
		w.layers = append(w.layers, LayerResult{Source: l, Desc: l, State: StateKept})
		w.mu.Unlock()
	}
}

// diffIDs reads the config's diff_ids, which must number one per layer.
func (w *imageWalk) diffIDs(ctx context.Context, desc ocispec.Descriptor, layerCount int) ([]digest.Digest, error) {
	var cfg struct {
		RootFS ocispec.RootFS `json:"rootfs"`
	}
	if _, err := ReadDocument(ctx, w.c.cs, &cfg, desc); err != nil {
		return nil, fmt.Errorf("reading config %s: %w", desc.Digest, err)
	}
	if len(cfg.RootFS.DiffIDs) != layerCount {
		return nil, fmt.Errorf("config %s lists %d diff_ids for %d layers: %w",
			desc.Digest, len(cfg.RootFS.DiffIDs), layerCount, errdefs.ErrInvalidArgument)
	}
	return cfg.RootFS.DiffIDs, nil
}

// convertConfig writes the config with its diff_ids replaced at the given
// positions and extended with appended (and Docker's legacy image IDs
// cleared), retyped with DockerToOCI.
func (w *imageWalk) convertConfig(ctx context.Context, desc ocispec.Descriptor, diffIDs map[int]digest.Digest, layerCount int, appended []digest.Digest) (*ocispec.Descriptor, error) {
	if len(diffIDs) == 0 && len(appended) == 0 {
		return w.retype(desc, nil), nil
	}
	var cfg ctdconverter.DualConfig
	lbls, err := ReadDocument(ctx, w.c.cs, &cfg, desc)
	if err != nil {
		return nil, fmt.Errorf("reading config %s: %w", desc.Digest, err)
	}
	var rootfs ocispec.RootFS
	if raw := cfg["rootfs"]; raw != nil {
		if err := json.Unmarshal(*raw, &rootfs); err != nil {
			return nil, fmt.Errorf("config %s: rootfs: %v: %w", desc.Digest, err, errdefs.ErrInvalidArgument)
		}
	}
	if len(rootfs.DiffIDs) != layerCount {
		return nil, fmt.Errorf("config %s lists %d diff_ids for %d layers: %w",
			desc.Digest, len(rootfs.DiffIDs), layerCount, errdefs.ErrInvalidArgument)
	}
	changed := len(appended) > 0
	rootfs.DiffIDs = append(rootfs.DiffIDs, appended...)
	for i, d := range diffIDs {
		if rootfs.DiffIDs[i] != d {
			rootfs.DiffIDs[i] = d
			changed = true
		}
	}
	if !changed {
		// Only the compression changed (uncompress, zstd:chunked): the config stays byte for byte.
		return w.retype(desc, nil), nil
	}
	b, err := json.Marshal(rootfs)
	if err != nil {
		return nil, err
	}
	cfg["rootfs"] = (*json.RawMessage)(&b)
	for _, k := range []string{"config", "container_config"} {
		if raw := cfg[k]; raw != nil && string(*raw) != "null" {
			var fields map[string]*json.RawMessage
			if err := json.Unmarshal(*raw, &fields); err != nil {
				return nil, fmt.Errorf("config %s: %s: %v: %w", desc.Digest, k, err, errdefs.ErrInvalidArgument)
			}
			delete(fields, "Image")
			b, err := json.Marshal(fields)
			if err != nil {
				return nil, err
			}
			cfg[k] = (*json.RawMessage)(&b)
		}
	}
	out, err := ctdconverter.WriteJSON(ctx, w.c.cs, &cfg, desc, withoutSourceLabels(lbls))
	if err != nil {
		return nil, err
	}
	return w.retype(desc, out), nil
}

// childLabels returns a new blob's labels: the source's, less distribution
// sources (the new blob exists in no registry yet) and child references, plus
// one "containerd.io/gc.ref.content.<kind>.<i>" reference per child.
func childLabels(src map[string]string, kind string, children []ocispec.Descriptor) map[string]string {
	out := withoutSourceLabels(src)
	prefix := "containerd.io/gc.ref.content." + kind + "."
	for k := range out {
		if strings.HasPrefix(k, prefix) || k == "containerd.io/gc.ref.content.config" {
			delete(out, k)
		}
	}
	for i, c := range children {
		out[prefix+strconv.Itoa(i)] = c.Digest.String()
	}
	return out
}

func withoutSourceLabels(src map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range src {
		if !strings.HasPrefix(k, labels.DistributionSourcePrefix) {
			out[k] = v
		}
	}
	return out
}
