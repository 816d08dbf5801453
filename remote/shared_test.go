package remote

import (
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/stretchr/testify/assert"

	"github.com/lazyconv/lazyconv/labels"
)

// Only the converted name's repository (when its manifest was pulled from
// there) and trusted repositories are asked for published conversions.
func TestSharedConversionsAskTheConvertedRepositoryAndTrustedOnes(t *testing.T) {
	info := sourceLabels
	for _, tc := range []struct {
		name    string
		image   string
		trusted Publishers
		info    content.Info
		want    []Source
	}{
		{"imported: a registry name but no source", "127.0.0.1:5000/app:v1", nil, content.Info{}, nil},
		{"pulled from it (containerd's label, no port)", "127.0.0.1:5000/app:v1", nil, info(map[string]string{"127.0.0.1": "app"}),
			[]Source{{"127.0.0.1:5000", "app"}}},
		{"pulled from it (lazyconv's label, with the port)", "127.0.0.1:5000/app:v1", nil, info(map[string]string{"127.0.0.1": "app", "127.0.0.1:5000": "app"}),
			[]Source{{"127.0.0.1:5000", "app"}}},
		{"other repositories holding the manifest are not asked", "127.0.0.1:5000/app:v1", nil,
			info(map[string]string{"127.0.0.1": "app,mirror/app", "registry.example": "team/app"}), []Source{{"127.0.0.1:5000", "app"}}},
		{"a trusted one is", "127.0.0.1:5000/app:v1", Publishers{"registry.example/team/*"},
			info(map[string]string{"127.0.0.1": "app,mirror/app", "registry.example": "team/app"}),
			[]Source{{"127.0.0.1:5000", "app"}, {"registry.example", "team/app"}}},
		{"a local name asks trusted ones only", "app:v1", Publishers{"registry.example:5000/**"},
			info(map[string]string{"registry.example:5000": "team/app", "other.example": "x"}), []Source{{"registry.example:5000", "team/app"}}},
		{"nowhere", "app:v1", nil, content.Info{}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewSharedConversions(nil, nil, nil, tc.image, tc.trusted)
			assert.Equal(t, tc.want, s.repositories(tc.info))
		})
	}
}

func TestPublishers(t *testing.T) {
	p := Publishers{"registry.example:5000/fleet/*", "cache.example/**"}
	for _, tc := range []struct {
		src  Source
		want bool
	}{
		{Source{"registry.example:5000", "fleet/app"}, true},
		{Source{"registry.example:5000", "fleet/team/app"}, false},
		{Source{"registry.example", "fleet/app"}, false},
		{Source{"cache.example", "a/b/c"}, true},
		{Source{"cache.example.evil", "a"}, false},
		{Source{"other.example", "fleet/app"}, false},
	} {
		assert.Equal(t, tc.want, p.Trusts(tc.src), "%v", tc.src)
	}
	assert.Error(t, Publishers{"[bad"}.Validate())
	assert.Error(t, Publishers{""}.Validate())
	assert.NoError(t, p.Validate())
}

// sourceLabels is a blob's info with distribution-source labels: host -> repositories.
func sourceLabels(sources map[string]string) content.Info {
	l := map[string]string{}
	for host, repos := range sources {
		l[labels.DistributionSourcePrefix+host] = repos
	}
	return content.Info{Labels: l}
}
