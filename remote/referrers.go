package remote

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Referrers are OCI 1.1 artifacts whose manifest names another manifest as
// its subject. A registry with the referrers API lists them itself; for one
// without it (distribution v3.1 among them), the publisher keeps the
// distribution spec's referrers tag schema: an index tagged
// "<alg>-<hex>" of the subject listing them, which containerd's
// FetchReferrers reads when the API answers 404.

// Referrer is an artifact to publish as a referrer of Subject.
type Referrer struct {
	// Subject is the manifest it refers to.
	Subject ocispec.Descriptor
	// ArtifactType says what it is.
	ArtifactType string
	// Annotations are its manifest's (and its listing's) annotations.
	Annotations map[string]string
	// Layer is its one blob and Data its bytes; with no layer, the manifest
	// lists the empty JSON blob, as the image spec advises.
	Layer *ocispec.Descriptor
	Data  []byte
}

// Manifest is the referrer's manifest and its bytes: the same referrer
// gives the same bytes, so publishing it again changes nothing.
func (r Referrer) Manifest() (ocispec.Descriptor, []byte, error) {
	layer := ocispec.DescriptorEmptyJSON
	if r.Layer != nil {
		layer = *r.Layer
	}
	subject := ocispec.Descriptor{MediaType: r.Subject.MediaType, Digest: r.Subject.Digest, Size: r.Subject.Size}
	m := ocispec.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: r.ArtifactType,
		Config:       ocispec.DescriptorEmptyJSON,
		Layers:       []ocispec.Descriptor{layer},
		Subject:      &subject,
		Annotations:  r.Annotations,
	}
	b, err := json.Marshal(m)
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	return ocispec.Descriptor{MediaType: m.MediaType, ArtifactType: r.ArtifactType, Digest: digest.FromBytes(b), Size: int64(len(b)),
		Annotations: r.Annotations}, b, nil
}

// PublishReferrer pushes r to the repository src (its blobs, then its
// manifest, tagged tag unless ""), and makes sure a listing of the
// subject's referrers names it: through the registry's referrers API, or
// else by adding it to the referrers tag schema's index. It returns the
// referrer's manifest.
func PublishReferrer(ctx context.Context, resolver remotes.Resolver, src Source, r Referrer, tag string) (ocispec.Descriptor, error) {
	desc, b, err := r.Manifest()
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	ref := src.Host + "/" + src.Repository + "@" + desc.Digest.String()
	if tag != "" {
		ref = src.Host + "/" + src.Repository + ":" + tag
	}
	pusher, err := resolver.Pusher(ctx, ref)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	empty := ocispec.DescriptorEmptyJSON
	if err := PushBytes(ctx, pusher, empty, empty.Data); err != nil {
		return ocispec.Descriptor{}, err
	}
	if r.Layer != nil {
		if err := PushBytes(ctx, pusher, *r.Layer, r.Data); err != nil {
			return ocispec.Descriptor{}, err
		}
	}
	if err := PushBytes(ctx, pusher, desc, b); err != nil {
		return ocispec.Descriptor{}, err
	}
	listed, err := ListReferrers(ctx, resolver, src, r.Subject.Digest, "")
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	for _, l := range listed {
		if l.Digest == desc.Digest {
			return desc, nil // the API lists it, or the tag index already does
		}
	}
	return desc, addToTagIndex(ctx, resolver, src, r.Subject.Digest, listed, desc)
}

// maxRereads bounds the referrers of one listing whose manifest is read to
// learn what they are (see ListReferrers).
const maxRereads = 16

// ListReferrers lists the referrers of subject in src (of artifactType,
// unless ""), through the referrers API or the tag schema. The registry is
// asked to filter by artifactType, and what it lists is filtered here (a
// registry need not filter, and the tag schema's index is not filtered). A
// registry that lists each referrer under its config's media type in place
// of its artifactType (go-containerregistry's pkg/registry, up to v0.22.1
// at least) lists every artifact with the empty config, lazyconv's among
// them, as "application/vnd.oci.empty.v1+json": of those (the first
// maxRereads), the manifest is read, and one of artifactType referring to
// subject is listed with its manifest's artifactType and annotations.
func ListReferrers(ctx context.Context, resolver remotes.Resolver, src Source, subject digest.Digest, artifactType string) ([]ocispec.Descriptor, error) {
	f, err := resolver.Fetcher(ctx, src.Host+"/"+src.Repository)
	if err != nil {
		return nil, err
	}
	rf, ok := f.(remotes.ReferrersFetcher)
	if !ok {
		return nil, fmt.Errorf("the resolver for %s/%s cannot list referrers: %w", src.Host, src.Repository, errdefs.ErrNotImplemented)
	}
	var opts []remotes.FetchReferrersOpt
	if artifactType != "" {
		// Not WithReferrerArtifactTypes: containerd would drop, unread,
		// what a registry lists under its config's media type.
		opts = append(opts, remotes.WithReferrerQueryFilter("artifactType", artifactType))
	}
	out, err := rf.FetchReferrers(ctx, subject, opts...)
	if err != nil {
		return nil, fmt.Errorf("listing the referrers of %s in %s/%s: %w", subject, src.Host, src.Repository, err)
	}
	if artifactType == "" {
		return out, nil
	}
	var kept []ocispec.Descriptor
	rereads := 0
	for _, d := range out {
		switch {
		case d.ArtifactType == artifactType:
			kept = append(kept, d)
		case d.ArtifactType == ocispec.MediaTypeEmptyJSON && d.MediaType == ocispec.MediaTypeImageManifest && rereads < maxRereads:
			rereads++
			if m, ok := rereadReferrer(ctx, resolver, src, subject, d); ok && m.ArtifactType == artifactType {
				d.ArtifactType, d.Annotations = m.ArtifactType, m.Annotations
				kept = append(kept, d)
			}
		}
	}
	return kept, nil
}

// rereadReferrer reads the manifest of d, listed as a referrer of subject,
// and reports whether it is one.
func rereadReferrer(ctx context.Context, resolver remotes.Resolver, src Source, subject digest.Digest, d ocispec.Descriptor) (ocispec.Manifest, bool) {
	b, err := ReadBlob(ctx, resolver, src, d, MaxManifestBytes)
	if err != nil {
		log.G(ctx).WithError(err).Debugf("lazyconv: reading referrer %s of %s", d.Digest, subject)
		return ocispec.Manifest{}, false
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(b, &m); err != nil || m.Subject == nil || m.Subject.Digest != subject {
		return ocispec.Manifest{}, false
	}
	return m, true
}

// tagIndexTag is the referrers tag schema's tag for subject: "sha256-<hex>".
func tagIndexTag(subject digest.Digest) string {
	return strings.Replace(subject.String(), ":", "-", 1)
}

// addToTagIndex pushes the subject's tag schema index with desc added to
// the referrers listed. Two publishers adding at once may lose one entry
// (the schema has no transaction); a lost conversion is made again.
func addToTagIndex(ctx context.Context, resolver remotes.Resolver, src Source, subject digest.Digest, listed []ocispec.Descriptor, desc ocispec.Descriptor) error {
	index := ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: append(listed, desc),
	}
	b, err := json.Marshal(index)
	if err != nil {
		return err
	}
	idesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromBytes(b), Size: int64(len(b))}
	pusher, err := resolver.Pusher(ctx, src.Host+"/"+src.Repository+":"+tagIndexTag(subject))
	if err != nil {
		return err
	}
	if err := PushBytes(ctx, pusher, idesc, b); err != nil {
		return fmt.Errorf("updating the referrers tag index of %s in %s/%s: %w", subject, src.Host, src.Repository, err)
	}
	return nil
}

// PushBytes pushes one blob or manifest, unless the registry has it (a
// manifest under the tag of the pusher's reference, when it has one).
func PushBytes(ctx context.Context, pusher remotes.Pusher, desc ocispec.Descriptor, b []byte) error {
	w, err := pusher.Push(ctx, desc)
	if errdefs.IsAlreadyExists(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pushing %s: %w", desc.Digest, err)
	}
	defer w.Close()
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("pushing %s: %w", desc.Digest, err)
	}
	if err := w.Commit(ctx, desc.Size, desc.Digest); err != nil && !errdefs.IsAlreadyExists(err) {
		return fmt.Errorf("pushing %s: %w", desc.Digest, err)
	}
	return nil
}

// ReadBlob fetches one blob or manifest of src into memory: at most max
// bytes, checked against desc's size and digest.
func ReadBlob(ctx context.Context, resolver remotes.Resolver, src Source, desc ocispec.Descriptor, max int64) ([]byte, error) {
	if desc.Size > max || desc.Size < 0 {
		return nil, fmt.Errorf("%s is %d bytes, over the %d read from a registry: %w", desc.Digest, desc.Size, max, errdefs.ErrInvalidArgument)
	}
	f, err := resolver.Fetcher(ctx, src.Host+"/"+src.Repository)
	if err != nil {
		return nil, err
	}
	rc, err := f.Fetch(ctx, desc)
	if err != nil {
		return nil, fmt.Errorf("fetching %s from %s/%s: %w", desc.Digest, src.Host, src.Repository, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, desc.Size+1))
	if err != nil {
		return nil, fmt.Errorf("fetching %s from %s/%s: %v: %w", desc.Digest, src.Host, src.Repository, err, errdefs.ErrUnavailable)
	}
	if int64(len(b)) != desc.Size || digest.FromBytes(b) != desc.Digest {
		return nil, fmt.Errorf("%s from %s/%s is not the blob its descriptor names: %w", desc.Digest, src.Host, src.Repository, errdefs.ErrDataLoss)
	}
	return b, nil
}

// MaxManifestBytes bounds a manifest or config read from a registry into
// memory (containerd's own bound on manifests).
var MaxManifestBytes = docker.MaxManifestSize

// ManifestOf returns the descriptor of the local manifest d (its media
// type read from it), for naming it as a subject.
func ManifestOf(ctx context.Context, cs content.Store, d digest.Digest) (ocispec.Descriptor, error) {
	info, err := cs.Info(ctx, d)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if info.Size > MaxManifestBytes {
		return ocispec.Descriptor{}, fmt.Errorf("manifest %s is %d bytes: %w", d, info.Size, errdefs.ErrInvalidArgument)
	}
	b, err := content.ReadBlob(ctx, cs, ocispec.Descriptor{Digest: d, Size: info.Size})
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	var m struct {
		MediaType string `json:"mediaType"`
	}
	if err := json.Unmarshal(b, &m); err != nil || m.MediaType == "" {
		return ocispec.Descriptor{}, fmt.Errorf("manifest %s names no media type: %w", d, errdefs.ErrInvalidArgument)
	}
	return ocispec.Descriptor{MediaType: m.MediaType, Digest: d, Size: info.Size}, nil
}
