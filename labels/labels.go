// Package labels names every content label and descriptor annotation lazyconv
// reads or writes, with typed helpers to get and set them.
//
// Labels are lazyconv's cache: what it learns about a blob (is it eStargz, what
// is its uncompressed digest, which converted variants exist) is stored as a
// content-store label, so that containerd's garbage collector and other tools
// (BuildKit, nerdctl) see the same facts.
package labels

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	ctdlabels "github.com/containerd/containerd/v2/pkg/labels"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/opencontainers/go-digest"
)

const (
	// Uncompressed is containerd's label holding the digest of a layer's
	// uncompressed tar (its diffID).
	Uncompressed = ctdlabels.LabelUncompressed

	// EStargz caches whether a blob is eStargz ("true" or "false"). It is the
	// key BuildKit writes, so both tools share one answer.
	EStargz = "buildkit.io/compression/estargz"

	// VariantPrefix starts the label on a source blob that names a converted
	// variant of it. The full key is VariantPrefix + variant name; being a
	// "containerd.io/gc.ref.content." label, it keeps the variant alive for as
	// long as the source lives.
	VariantPrefix = "containerd.io/gc.ref.content.lazyconv."

	// VariantBackRefPrefix starts the containerd v2.2+ back-reference label on a
	// variant, naming its source: the variant is kept while the source lives even
	// if the source's own labels are rewritten.
	VariantBackRefPrefix = "containerd.io/gc.bref.content.lazyconv."

	// DistributionSourcePrefix starts containerd's labels recording which
	// repository of which registry a blob came from:
	// "containerd.io/distribution.source.<host>" = "<repo>[,<repo>...]".
	DistributionSourcePrefix = ctdlabels.LabelDistributionSource + "."

	// TOCDigestAnnotation is the layer descriptor annotation holding the digest
	// of an eStargz layer's TOC JSON.
	TOCDigestAnnotation = estargz.TOCJSONDigestAnnotation

	// UncompressedSizeAnnotation is the layer descriptor annotation holding the
	// size of an eStargz layer once decompressed.
	UncompressedSizeAnnotation = estargz.StoreUncompressedSizeAnnotation

	// ZstdChunkedManifestChecksumAnnotation holds the digest of a zstd:chunked
	// layer's compressed TOC (containers/storage reads it).
	ZstdChunkedManifestChecksumAnnotation = zstdchunked.ManifestChecksumAnnotation
	// ZstdChunkedManifestPositionAnnotation holds
	// "offset:compressed:uncompressed:type" of a zstd:chunked layer's TOC.
	ZstdChunkedManifestPositionAnnotation = zstdchunked.ManifestPositionAnnotation
)

// UncompressedDigest returns the layer's cached uncompressed digest, if any.
func UncompressedDigest(info content.Info) (digest.Digest, bool) {
	v, ok := info.Labels[Uncompressed]
	if !ok {
		return "", false
	}
	d, err := digest.Parse(v)
	if err != nil {
		return "", false
	}
	return d, true
}

// IsEStargz returns the cached eStargz answer for a blob and whether one is cached.
func IsEStargz(info content.Info) (isEStargz, known bool) {
	v, ok := info.Labels[EStargz]
	if !ok {
		return false, false
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, false
	}
	return b, true
}

// FormatBool is the label value for a cached boolean answer.
func FormatBool(b bool) string { return strconv.FormatBool(b) }

// VariantKey returns the label key on a source blob that links its variant of
// the given name (for example "estargz" or "estargz.level-6").
func VariantKey(name string) string { return VariantPrefix + name }

// VariantBackRefKey returns the back-reference label key on a variant of the
// given name, whose value is its source's digest.
func VariantBackRefKey(name string) string { return VariantBackRefPrefix + name }

// Variant returns the digest of the source blob's variant of the given name, if linked.
func Variant(info content.Info, name string) (digest.Digest, bool) {
	v, ok := info.Labels[VariantKey(name)]
	if !ok {
		return "", false
	}
	d, err := digest.Parse(v)
	if err != nil {
		return "", false
	}
	return d, true
}

// Variants returns every variant linked from the source blob, by variant name.
func Variants(info content.Info) map[string]digest.Digest {
	out := map[string]digest.Digest{}
	for k, v := range info.Labels {
		name, ok := strings.CutPrefix(k, VariantPrefix)
		if !ok {
			continue
		}
		if d, err := digest.Parse(v); err == nil {
			out[name] = d
		}
	}
	return out
}

// DistributionSources returns the repositories recorded per registry host.
func DistributionSources(info content.Info) map[string][]string {
	out := map[string][]string{}
	for k, v := range info.Labels {
		host, ok := strings.CutPrefix(k, DistributionSourcePrefix)
		if !ok || v == "" {
			continue
		}
		out[host] = strings.Split(v, ",")
	}
	return out
}

// AnnotationPrefix starts labels on a converted blob that record its
// descriptor annotations (for example the eStargz TOC digest), so that a cache
// hit rebuilds the same descriptor without reading the blob.
const AnnotationPrefix = "lazyconv.io/annotation."

// AnnotationsToLabels records descriptor annotations as labels into dst.
func AnnotationsToLabels(annotations, dst map[string]string) {
	for k, v := range annotations {
		dst[AnnotationPrefix+k] = v
	}
}

// AnnotationsFromLabels returns the descriptor annotations recorded on a blob
// (nil when there are none).
func AnnotationsFromLabels(info content.Info) map[string]string {
	var out map[string]string
	for k, v := range info.Labels {
		if a, ok := strings.CutPrefix(k, AnnotationPrefix); ok {
			if out == nil {
				out = map[string]string{}
			}
			out[a] = v
		}
	}
	return out
}

// NotLosslessAnnotation is on a converted layer's descriptor when the layer
// does not carry its source byte for byte (sparse files were written as
// regular files); its value says what was rewritten.
const NotLosslessAnnotation = "lazyconv.io/not-lossless"

// RuleFailed is on a source image whose last rule conversion failed; its
// value says to what and why. A later successful conversion removes it.
const RuleFailed = "lazyconv.io/rule-failed"

// ImageConvertedFrom is on an image that lazyconv stored as a conversion's
// target; its value is the name of the image it was converted from. It is
// what shows that lazyconv made the image: the service converts onto such an
// image again without being asked to overwrite it, and refuses to replace
// any other existing image unless the request says to overwrite.
const ImageConvertedFrom = "lazyconv.io/converted-from-image"

// ConvertedFromDigest is on an image a rule made: the digest of the source
// image's target it was converted from. A rule's output is current while
// its source's name still points at that digest.
const ConvertedFromDigest = "lazyconv.io/converted-from-digest"

// RuleOutput is on an image a rule made; its value is the rule's tag
// suffix. Images so labelled are never matched by a rule, and a rule with
// prune_outputs deletes them when their source image is deleted.
const RuleOutput = "lazyconv.io/rule-output"

// RuleSpec is on an image a rule made: a digest of the rule's format,
// options and platforms when it made it. Changing those makes the outputs
// not current, and reconcile converts them again.
const RuleSpec = "lazyconv.io/rule-spec"

// RulePushed is on a rule's output once it was pushed; its value is the
// digest pushed (the output's target then).
const RulePushed = "lazyconv.io/rule-pushed"

// RuleFailedDigestPrefix + a rule's tag suffix is on a source image whose
// conversion by that rule failed for good (not a transient failure); its
// value is the source digest that failed, which is not converted again (by
// events or reconcile) until the label is removed or the name points at
// another digest.
const RuleFailedDigestPrefix = "lazyconv.io/rule-failed-digest."

// RuleGaveUpDigestPrefix + a rule's tag suffix is on a source image whose
// conversion by that rule failed transiently as many times as it is retried;
// its value is the digest. Events for the name do not run it again; the next
// reconcile removes the label and tries once more.
const RuleGaveUpDigestPrefix = "lazyconv.io/rule-gave-up-digest."

// Notified is on an image lazyconv pulled because a registry notified its
// push (value: the digest pulled). Notifications move only names so
// labelled, never an image someone else made.
const Notified = "lazyconv.io/notified"

// Temporary is on images lazyconv names only for the time of one request
// (the conversion a push with --force-compression makes): rules never
// match them.
const Temporary = "lazyconv.io/temporary"

// CRIPinned is CRI's image label that keeps an image from kubelet's image
// garbage collection (the sandbox image, say): it belongs to the image it
// was put on, never to a conversion's new target.
const CRIPinned = "io.cri-containerd.pinned"

// AdoptedUnverified is on a converted manifest adopted, unread, from a
// conversion a trusted publisher published (value: "host/repository"):
// lazyconv publishes again only conversions it made or verified itself.
const AdoptedUnverified = "lazyconv.io/adopted-unverified"

// LeaseConverting marks the leases lazyconv creates for conversions in flight
// (value: what is being converted). A lease so marked that outlives its
// process (a crash, kill -9) is deleted when the service starts again, so
// that garbage collection reclaims what the interrupted conversion wrote.
const LeaseConverting = "lazyconv.io/converting"

// Set writes the given labels on blob d (other labels stay as they are).
func Set(ctx context.Context, cs content.Manager, d digest.Digest, set map[string]string) error {
	if len(set) == 0 {
		return nil
	}
	fields := make([]string, 0, len(set))
	for k := range set {
		fields = append(fields, "labels."+k)
	}
	if _, err := cs.Update(ctx, content.Info{Digest: d, Labels: set}, fields...); err != nil {
		return fmt.Errorf("labelling %s: %w", d, err)
	}
	return nil
}
