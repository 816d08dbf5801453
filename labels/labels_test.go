package labels_test

import (
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/assert"

	"github.com/lazyconv/lazyconv/labels"
)

const d1 = digest.Digest("sha256:1111111111111111111111111111111111111111111111111111111111111111")

func TestGetters(t *testing.T) {
	for _, tc := range []struct {
		name  string
		label map[string]string
		check func(t *testing.T, info content.Info)
	}{
		{"uncompressed present", map[string]string{labels.Uncompressed: d1.String()}, func(t *testing.T, info content.Info) {
			d, ok := labels.UncompressedDigest(info)
			assert.True(t, ok)
			assert.Equal(t, d1, d)
		}},
		{"uncompressed malformed", map[string]string{labels.Uncompressed: "sha256:nope"}, func(t *testing.T, info content.Info) {
			_, ok := labels.UncompressedDigest(info)
			assert.False(t, ok)
		}},
		{"eStargz true", map[string]string{labels.EStargz: "true"}, func(t *testing.T, info content.Info) {
			is, known := labels.IsEStargz(info)
			assert.True(t, known)
			assert.True(t, is)
		}},
		{"eStargz false is an answer too", map[string]string{labels.EStargz: "false"}, func(t *testing.T, info content.Info) {
			is, known := labels.IsEStargz(info)
			assert.True(t, known)
			assert.False(t, is)
		}},
		{"eStargz unknown", nil, func(t *testing.T, info content.Info) {
			_, known := labels.IsEStargz(info)
			assert.False(t, known)
		}},
		{"variants", map[string]string{labels.VariantKey("estargz"): d1.String(), labels.VariantKey("zstd"): "garbage", "other": "x"}, func(t *testing.T, info content.Info) {
			v, ok := labels.Variant(info, "estargz")
			assert.True(t, ok)
			assert.Equal(t, d1, v)
			_, ok = labels.Variant(info, "zstd")
			assert.False(t, ok, "a malformed digest is no link")
			assert.Equal(t, map[string]digest.Digest{"estargz": d1}, labels.Variants(info))
		}},
		{"distribution sources", map[string]string{labels.DistributionSourcePrefix + "docker.io": "library/a,library/b", labels.DistributionSourcePrefix + "ghcr.io": ""}, func(t *testing.T, info content.Info) {
			assert.Equal(t, map[string][]string{"docker.io": {"library/a", "library/b"}}, labels.DistributionSources(info))
		}},
		{"annotations", map[string]string{labels.AnnotationPrefix + labels.TOCDigestAnnotation: d1.String()}, func(t *testing.T, info content.Info) {
			assert.Equal(t, map[string]string{labels.TOCDigestAnnotation: d1.String()}, labels.AnnotationsFromLabels(info))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.check(t, content.Info{Labels: tc.label}) })
	}
}

func TestAnnotationsRoundTrip(t *testing.T) {
	in := map[string]string{labels.TOCDigestAnnotation: d1.String(), labels.UncompressedSizeAnnotation: "42"}
	dst := map[string]string{}
	labels.AnnotationsToLabels(in, dst)
	assert.Equal(t, in, labels.AnnotationsFromLabels(content.Info{Labels: dst}))
	assert.Nil(t, labels.AnnotationsFromLabels(content.Info{}))
}

func TestKeysAreGCReferences(t *testing.T) {
	// containerd's GC follows "containerd.io/gc.ref.content." labels and the
	// "containerd.io/gc.bref.content" back-references: the variant links must be both.
	assert.Equal(t, "containerd.io/gc.ref.content.lazyconv.estargz", labels.VariantKey("estargz"))
	assert.Equal(t, "containerd.io/gc.bref.content.lazyconv.estargz", labels.VariantBackRefKey("estargz"))
}
