package remote

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/labels"
)

// MaxRecordBytes bounds an access record read from a registry.
var MaxRecordBytes int64 = 64 << 20

// RecordReferrer is the referrer holding an access record of subject:
// record (JSON lines in stargz-snapshotter's recorder format, of media type
// mediaType) as its one layer, and when it was made.
func RecordReferrer(subject ocispec.Descriptor, record []byte, mediaType string, created time.Time) Referrer {
	layer := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(record), Size: int64(len(record))}
	return Referrer{Subject: subject, ArtifactType: labels.RecordArtifactType, Layer: &layer, Data: record,
		Annotations: map[string]string{ocispec.AnnotationCreated: created.UTC().Format(time.RFC3339Nano)}}
}

// FetchRecord reads the access record whose referrer ref names
// (host/repository:tag or @digest), and returns it with the subject it
// records.
func FetchRecord(ctx context.Context, resolver remotes.Resolver, ref string) ([]byte, ocispec.Descriptor, error) {
	src, err := SourceOf(ref)
	if err != nil {
		return nil, ocispec.Descriptor{}, err
	}
	_, desc, err := resolver.Resolve(ctx, ref)
	if err != nil {
		return nil, ocispec.Descriptor{}, fmt.Errorf("resolving %s: %w", ref, err)
	}
	b, err := ReadBlob(ctx, resolver, src, desc, MaxManifestBytes)
	if err != nil {
		return nil, ocispec.Descriptor{}, err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, ocispec.Descriptor{}, fmt.Errorf("%s: %v: %w", ref, err, errdefs.ErrInvalidArgument)
	}
	if m.ArtifactType != labels.RecordArtifactType || len(m.Layers) != 1 || m.Subject == nil {
		return nil, ocispec.Descriptor{}, fmt.Errorf("%s is no access record (artifactType %q with one layer and a subject): %w",
			ref, labels.RecordArtifactType, errdefs.ErrInvalidArgument)
	}
	record, err := ReadBlob(ctx, resolver, src, m.Layers[0], MaxRecordBytes)
	if err != nil {
		return nil, ocispec.Descriptor{}, err
	}
	return record, *m.Subject, nil
}

// LatestRecord finds the newest access record referring to subject in src
// (by its creation annotation) and returns its reference, or ErrNotFound.
func LatestRecord(ctx context.Context, resolver remotes.Resolver, src Source, subject digest.Digest) (string, error) {
	listed, err := ListReferrers(ctx, resolver, src, subject, labels.RecordArtifactType)
	if err != nil {
		return "", err
	}
	var newest *ocispec.Descriptor
	var newestAt time.Time
	for i, r := range listed {
		if r.ArtifactType != labels.RecordArtifactType {
			continue
		}
		at, _ := time.Parse(time.RFC3339Nano, r.Annotations[ocispec.AnnotationCreated])
		if newest == nil || at.After(newestAt) {
			newest, newestAt = &listed[i], at
		}
	}
	if newest == nil {
		return "", fmt.Errorf("no access record refers to %s in %s/%s: %w", subject, src.Host, src.Repository, errdefs.ErrNotFound)
	}
	return src.Ref(newest.Digest), nil
}
