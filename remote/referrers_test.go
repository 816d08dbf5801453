package remote

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/labels"
)

func TestReferrerManifests(t *testing.T) {
	subject := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("source"), Size: 512,
		Annotations: map[string]string{"not": "copied"}}
	converted := digest.FromString("converted")
	record := []byte(`{"path":"bin/sh"}` + "\n")
	for _, tc := range []struct {
		name         string
		r            Referrer
		artifactType string
		layer        ocispec.Descriptor
	}{
		{"conversion", ConversionReferrer(subject, "estargz", converted), labels.ConversionArtifactType, ocispec.DescriptorEmptyJSON},
		{"record", RecordReferrer(subject, record, "application/vnd.lazyconv.record.v1+jsonl", time.Unix(1, 0)), labels.RecordArtifactType,
			ocispec.Descriptor{MediaType: "application/vnd.lazyconv.record.v1+jsonl", Digest: digest.FromBytes(record), Size: int64(len(record))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			desc, b, err := tc.r.Manifest()
			require.NoError(t, err)
			again, _, err := tc.r.Manifest()
			require.NoError(t, err)
			assert.Equal(t, desc, again, "the same referrer is the same manifest: publishing twice is a no-op")
			assert.Equal(t, digest.FromBytes(b), desc.Digest)
			assert.Equal(t, tc.artifactType, desc.ArtifactType)

			var m ocispec.Manifest
			require.NoError(t, json.Unmarshal(b, &m))
			assert.Equal(t, tc.artifactType, m.ArtifactType)
			assert.Equal(t, ocispec.MediaTypeEmptyJSON, m.Config.MediaType)
			assert.Equal(t, []ocispec.Descriptor{tc.layer}, m.Layers)
			require.NotNil(t, m.Subject)
			assert.Equal(t, ocispec.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size}, *m.Subject)
			assert.Equal(t, m.Annotations, desc.Annotations, "the listing carries the annotations a lookup filters on")
		})
	}
	desc, _, err := ConversionReferrer(subject, "estargz", converted).Manifest()
	require.NoError(t, err)
	assert.Equal(t, "estargz", desc.Annotations[labels.VariantAnnotation])
	assert.Equal(t, converted.String(), desc.Annotations[labels.ConvertedManifestAnnotation])
	other, _, err := ConversionReferrer(subject, "zstdchunked", converted).Manifest()
	require.NoError(t, err)
	assert.NotEqual(t, desc.Digest, other.Digest, "one referrer per variant")
	assert.Equal(t, "sha256-"+subject.Digest.Encoded(), tagIndexTag(subject.Digest))
}

func TestRepositoriesAskTheImagesOwnFirstAndOnce(t *testing.T) {
	info := sourceLabels
	for _, tc := range []struct {
		name  string
		image string
		info  content.Info
		want  []Source
	}{
		{"imported: a registry name but no source", "127.0.0.1:5000/app:v1", content.Info{}, nil},
		{"label of the same repository, without the port", "127.0.0.1:5000/app:v1", info(map[string]string{"127.0.0.1": "app"}),
			[]Source{{"127.0.0.1:5000", "app"}}},
		{"labels of other repositories", "127.0.0.1:5000/app:v1", info(map[string]string{"127.0.0.1": "app,mirror/app", "registry.example": "team/app"}),
			[]Source{{"127.0.0.1:5000", "app"}, {"127.0.0.1", "mirror/app"}, {"registry.example", "team/app"}}},
		{"pulled under another name", "127.0.0.1:5000/renamed:v1", info(map[string]string{"127.0.0.1": "app"}), []Source{{"127.0.0.1", "app"}}},
		{"a local name", "app:v1", info(map[string]string{"registry.example": "team/app"}), []Source{{"registry.example", "team/app"}}},
		{"nowhere", "app:v1", content.Info{}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, Repositories(tc.image, tc.info))
		})
	}
}
