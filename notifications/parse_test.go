package notifications

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	dIndex    = digest.Digest("sha256:1bc04b5291c26a46d918139138b992d2de976d6851d0893b0476b85bfbdfc6e6")
	dAMD64    = digest.Digest("sha256:5861314d7fccb39c2192173240eab44fa35ca66426201ca2acd0630a6258dd51")
	dManifest = digest.Digest("sha256:05b3abf2579a5eb66403cd78be557fd860633a1fe2103c7642030defe32c657f")
	dLayer    = digest.Digest("sha256:77ea7eee3d80b1a38f83906dd3048e2689457eb90e18a7d12f839c5ae37106a2")
	dHarbor1  = digest.Digest("sha256:21aa66f9707f1ac88e177e04940b5e8675c9f51fca05d84440820cf3d84df5ab")
	dHarbor2  = digest.Digest("sha256:878235d38b1cb83447931b5849d84d48931b393019fdfc855a2f8d33c9763b3c")
)

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	require.NoError(t, err)
	return b
}

// envelope returns a distribution envelope of the given events.
func envelope(events ...string) string {
	return `{"events":[` + strings.Join(events, ",") + `]}`
}

// event returns a distribution event of action on target, sent to
// req.example.com.
func event(action, target string) string {
	return fmt.Sprintf(`{"id":"e","timestamp":"2026-08-20T09:14:03Z","action":%q,"target":%s,"request":{"id":"r","host":"req.example.com","method":"PUT","useragent":"t"},"actor":{},"source":{"addr":"s:5000"}}`, action, target)
}

func TestParseFixtures(t *testing.T) {
	for _, tc := range []struct {
		file, contentType string
		want              []Push
	}{
		{
			file:        "distribution-v3-push-index-tag.json",
			contentType: MediaTypeDistributionEventsV2,
			want: []Push{{
				Host: "127.0.0.1:5000", Repository: "team/app", Tag: "v1", Digest: dIndex,
				MediaType: "application/vnd.oci.image.index.v1+json",
			}},
		},
		{
			file:        "distribution-v3-push-manifest-digest.json",
			contentType: MediaTypeDistributionEventsV2,
			want: []Push{{
				Host: "127.0.0.1:5000", Repository: "team/app", Digest: dAMD64,
				MediaType: "application/vnd.oci.image.manifest.v1+json",
			}},
		},
		{file: "distribution-v3-push-blob.json", contentType: MediaTypeDistributionEventsV2},
		{file: "distribution-v3-mount-blob.json", contentType: MediaTypeDistributionEventsV2},
		{file: "distribution-v3-pull-manifest.json", contentType: MediaTypeDistributionEventsV2},
		{file: "distribution-v3-delete-manifest.json", contentType: MediaTypeDistributionEventsV2},
		{
			file:        "distribution-v1-push.json",
			contentType: MediaTypeDistributionEventsV1,
			want: []Push{{
				Host: "registry.example.com", Repository: "library/app", Tag: "1.4.2", Digest: dManifest,
				MediaType: "application/vnd.docker.distribution.manifest.v2+json",
			}},
		},
		{
			// Old registries: no media type, the URL names the manifest by tag.
			file:        "distribution-v1-push-no-mediatype.json",
			contentType: MediaTypeDistributionEventsV1,
			want:        []Push{{Host: "192.168.100.227:5000", Repository: "hello-world", Tag: "latest", Digest: dManifest}},
		},
		{
			file:        "harbor-push-tag.json",
			contentType: "application/json",
			want:        []Push{{Host: "harbor.example.com", Repository: "library/app", Tag: "v1", Digest: dHarbor1}},
		},
		{
			// Harbor gives the digest as the tag of a push by digest.
			file:        "harbor-push-digest.json",
			contentType: "application/json; charset=utf-8",
			want:        []Push{{Host: "harbor.example.com:8443", Repository: "library/app", Digest: dHarbor2}},
		},
		{file: "harbor-pull.json", contentType: "application/json"},
		{
			file:        "harbor-cloudevents-push.json",
			contentType: MediaTypeCloudEvents,
			want:        []Push{{Host: "harbor.example.com", Repository: "library/app", Tag: "v1", Digest: dHarbor1}},
		},
		{
			// A sender with no content type: the body is recognised.
			file: "distribution-v3-push-index-tag.json",
			want: []Push{{
				Host: "127.0.0.1:5000", Repository: "team/app", Tag: "v1", Digest: dIndex,
				MediaType: "application/vnd.oci.image.index.v1+json",
			}},
		},
		{
			file:        "harbor-push-tag.json",
			contentType: "text/plain",
			want:        []Push{{Host: "harbor.example.com", Repository: "library/app", Tag: "v1", Digest: dHarbor1}},
		},
	} {
		t.Run(tc.file+"/"+tc.contentType, func(t *testing.T) {
			got, err := Parse(tc.contentType, readFixture(t, tc.file))
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestParseDistributionEvents(t *testing.T) {
	const (
		oci   = "application/vnd.oci.image.manifest.v1+json"
		layer = "application/vnd.oci.image.layer.v1.tar+gzip"
	)
	mURL := "https://reg.example.com/v2/team/app/manifests/" + dManifest.String()
	bURL := "https://reg.example.com/v2/team/app/blobs/" + dLayer.String()
	target := func(mediaType string, dgst digest.Digest, repo, url, tag string) string {
		b, _ := json.Marshal(map[string]any{"mediaType": mediaType, "digest": dgst, "size": 1, "length": 1, "repository": repo, "url": url, "tag": tag})
		return string(b)
	}
	push := func(repo, tag string) Push {
		return Push{Host: "reg.example.com", Repository: repo, Tag: tag, Digest: dManifest, MediaType: oci}
	}
	for _, tc := range []struct {
		name string
		body string
		want []Push
	}{
		{"manifest push", envelope(event("push", target(oci, dManifest, "team/app", mURL, "v1"))), []Push{push("team/app", "v1")}},
		{"media type parameters dropped", envelope(event("push", target(oci+"; charset=utf-8", dManifest, "team/app", mURL, "v1"))), []Push{push("team/app", "v1")}},
		{"pull", envelope(event("pull", target(oci, dManifest, "team/app", mURL, "v1"))), nil},
		{"delete", envelope(event("delete", target("", dManifest, "team/app", "", ""))), nil},
		{"mount", envelope(event("mount", target("application/octet-stream", dLayer, "team/app", bURL, ""))), nil},
		{"blob push", envelope(event("push", target("application/octet-stream", dLayer, "team/app", bURL, ""))), nil},
		{"blob push without media type", envelope(event("push", target("", dLayer, "team/app", bURL, ""))), nil},
		{"manifest media type at a blob URL", envelope(event("push", target(oci, dLayer, "team/app", bURL, ""))), nil},
		// distribution's own format test puts layers at a manifest URL.
		{"layer media type at a manifest URL", envelope(event("push", target(layer, dLayer, "team/app", mURL, ""))), nil},
		{"schema1 manifest", envelope(event("push", target("application/vnd.docker.distribution.manifest.v1+prettyjws", dManifest, "team/app", mURL, "v1"))), nil},
		{"no media type, tag", envelope(event("push", target("", dManifest, "team/app", "", "v1"))),
			[]Push{{Host: "req.example.com", Repository: "team/app", Tag: "v1", Digest: dManifest}}},
		{"no media type, no tag, no URL", envelope(event("push", target("", dManifest, "team/app", "", ""))), nil},
		{"unknown media type with a manifest URL", envelope(event("push", target("application/vnd.example.manifest.v1+json", dManifest, "team/app", mURL, ""))),
			[]Push{{Host: "reg.example.com", Repository: "team/app", Digest: dManifest, MediaType: "application/vnd.example.manifest.v1+json"}}},
		{"relative URL: host from the request", envelope(event("push", target(oci, dManifest, "team/app", "/v2/team/app/manifests/"+dManifest.String(), "v1"))),
			[]Push{{Host: "req.example.com", Repository: "team/app", Tag: "v1", Digest: dManifest, MediaType: oci}}},
		{"repository and digest from the URL", envelope(event("push", target(oci, "", "", "https://reg.example.com/prefix/v2/a/manifests/b/manifests/"+dManifest.String(), ""))),
			[]Push{{Host: "reg.example.com", Repository: "a/manifests/b", Digest: dManifest, MediaType: oci}}},
		{"invalid repository skipped", envelope(
			event("push", target(oci, dManifest, "Team/App", mURL, "v1")),
			event("push", target(oci, dManifest, "team//app", mURL, "v1")),
			event("push", target(oci, dManifest, "../etc", mURL, "v1")),
			event("push", target(oci, dManifest, strings.Repeat("a/", 128)+"a", mURL, "v1")),
			event("push", target(oci, dManifest, "team/app", mURL, "v2")),
		), []Push{push("team/app", "v2")}},
		{"invalid tag skipped", envelope(event("push", target(oci, dManifest, "team/app", mURL, "-v1")), event("push", target(oci, dManifest, "team/app", mURL, strings.Repeat("t", 129)))), nil},
		{"invalid digest skipped", envelope(event("push", target(oci, "sha256:0123456789abcdef0", "team/app", mURL, "v1")), event("push", target(oci, "md5:abc", "team/app", mURL, "v1"))), nil},
		{"invalid host skipped", envelope(event("push", target(oci, dManifest, "team/app", "https://evil host/v2/team/app/manifests/v1", "v1")),
			event("push", target(oci, dManifest, "team/app", "https://a_b.example.com/v2/team/app/manifests/v1", "v1"))), nil},
		{"duplicates given once", envelope(
			event("push", target(oci, dManifest, "team/app", mURL, "v1")),
			event("push", target(oci, dManifest, "team/app", mURL, "v1")),
			event("push", target(oci, dManifest, "team/other", mURL, "v1")),
			event("push", target(oci, dManifest, "team/app", mURL, "v1")),
		), []Push{push("team/app", "v1"), push("team/other", "v1")}},
		{"malformed event skipped", envelope(`{"action":"push","target":{"tag":5}}`, `"not an event"`, `null`, event("push", target(oci, dManifest, "team/app", mURL, "v1"))),
			[]Push{push("team/app", "v1")}},
		{"empty envelope", `{}`, nil},
		{"null events", `{"events":null}`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(MediaTypeDistributionEventsV2, []byte(tc.body))
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestParseHarbor(t *testing.T) {
	for _, tc := range []struct {
		name string
		body string
		want []Push
	}{
		{"no digest", `{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"tag":"v2","resource_url":"h.example.com/library/app:v2"}],"repository":{"repo_full_name":"library/app"}}}`,
			[]Push{{Host: "h.example.com", Repository: "library/app", Tag: "v2"}}},
		{"repository from the resource URL", `{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"digest":"` + dHarbor1.String() + `","resource_url":"h.example.com/p/a/b@` + dHarbor1.String() + `"}]}}`,
			[]Push{{Host: "h.example.com", Repository: "p/a/b", Digest: dHarbor1}}},
		{"scheme stripped", `{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"tag":"v2","resource_url":"https://h.example.com/library/app:v2"}],"repository":{"repo_full_name":"library/app"}}}`,
			[]Push{{Host: "h.example.com", Repository: "library/app", Tag: "v2"}}},
		{"other event type", `{"type":"DELETE_ARTIFACT","event_data":{"resources":[{"tag":"v2","resource_url":"h.example.com/library/app:v2"}],"repository":{"repo_full_name":"library/app"}}}`, nil},
		{"scanning event", `{"type":"SCANNING_COMPLETED","occur_at":1,"event_data":{"resources":[{"digest":"` + dHarbor1.String() + `","scan_overview":{}}]}}`, nil},
		{"invalid repository", `{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"tag":"v2","resource_url":"h.example.com/Library/App:v2"}],"repository":{"repo_full_name":"Library/App"}}}`, nil},
		{"no resource URL", `{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"tag":"v2"}],"repository":{"repo_full_name":"library/app"}}}`, nil},
		{"malformed resource skipped", `{"type":"PUSH_ARTIFACT","event_data":{"resources":[7,{"tag":"v2","resource_url":"h.example.com/library/app:v2"}],"repository":{"repo_full_name":"library/app"}}}`,
			[]Push{{Host: "h.example.com", Repository: "library/app", Tag: "v2"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse("application/json", []byte(tc.body))
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestParseErrors(t *testing.T) {
	many := make([]string, MaxEvents+1)
	for i := range many {
		many[i] = `{}`
	}
	for _, tc := range []struct {
		name, contentType, body string
		unsupported             bool
		contains                string
	}{
		{name: "not JSON", contentType: MediaTypeDistributionEventsV2, body: "hello"},
		{name: "JSON array", contentType: MediaTypeDistributionEventsV1, body: "[]"},
		{name: "JSON null", contentType: "application/json", body: "null"},
		{name: "truncated", contentType: "application/json", body: `{"type":"PUSH_ARTIFACT"`},
		{name: "events not a list", contentType: MediaTypeDistributionEventsV2, body: `{"events":{"action":"push"}}`},
		{name: "too many events", contentType: MediaTypeDistributionEventsV2, body: envelope(many...), contains: "limit of 1000"},
		{name: "too many resources", contentType: "application/json", body: `{"type":"PUSH_ARTIFACT","event_data":{"resources":[` + strings.Join(many, ",") + `]}}`, contains: "limit of 1000"},
		{name: "harbor type not a string", contentType: "application/json", body: `{"type":5}`},
		{name: "unknown JSON shape", contentType: "application/json", body: `{"hello":"world"}`},
		{name: "cloudevent without type", contentType: MediaTypeCloudEvents, body: `{"specversion":"1.0"}`},
		{name: "unknown content type, not JSON", contentType: "text/plain", body: "hello", unsupported: true},
		{name: "unknown content type, unknown shape", contentType: "application/xml", body: `{"a":1}`, unsupported: true},
		{name: "no content type, not JSON", body: "<xml/>", unsupported: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.contentType, []byte(tc.body))
			require.Error(t, err)
			assert.True(t, errdefs.IsInvalidArgument(err), "%v", err)
			assert.Equal(t, tc.unsupported, errors.Is(err, ErrUnsupportedContentType), "%v", err)
			if tc.contains != "" {
				assert.Contains(t, err.Error(), tc.contains)
			}
		})
	}
}

func TestPushRef(t *testing.T) {
	assert.Equal(t, "127.0.0.1:5000/team/app:v1", Push{Host: "127.0.0.1:5000", Repository: "team/app", Tag: "v1", Digest: dIndex}.Ref())
	assert.Equal(t, "registry.example.com/team/app@"+dIndex.String(), Push{Host: "registry.example.com", Repository: "team/app", Digest: dIndex}.Ref())
}

func TestValidate(t *testing.T) {
	ok := Push{Host: "r.example.com", Repository: "a", Tag: "t"}
	for _, tc := range []struct {
		name  string
		edit  func(*Push)
		valid bool
	}{
		{"minimal", func(*Push) {}, true},
		{"ipv6 host", func(p *Push) { p.Host = "[::1]:5000" }, true},
		{"localhost", func(p *Push) { p.Host = "localhost" }, true},
		{"separators", func(p *Push) { p.Repository = "a.b/c_d/e__f/g-h/i---j" }, true},
		{"255 long repository", func(p *Push) { p.Repository = strings.Repeat("a", 255) }, true},
		{"128 long tag", func(p *Push) { p.Tag = "T" + strings.Repeat("_", 127) }, true},
		{"digest only", func(p *Push) { p.Tag, p.Digest = "", dIndex }, true},
		{"no host", func(p *Push) { p.Host = "" }, false},
		{"host with a slash", func(p *Push) { p.Host = "r.example.com/x" }, false},
		{"host with space", func(p *Push) { p.Host = "r example" }, false},
		{"host with userinfo", func(p *Push) { p.Host = "u@r.example.com" }, false},
		{"no repository", func(p *Push) { p.Repository = "" }, false},
		{"256 long repository", func(p *Push) { p.Repository = strings.Repeat("a", 256) }, false},
		{"repository with a leading slash", func(p *Push) { p.Repository = "/a" }, false},
		{"repository with a trailing slash", func(p *Push) { p.Repository = "a/" }, false},
		{"repository with triple underscore", func(p *Push) { p.Repository = "a___b" }, false},
		{"uppercase repository", func(p *Push) { p.Repository = "A" }, false},
		{"129 long tag", func(p *Push) { p.Tag = strings.Repeat("t", 129) }, false},
		{"tag with a colon", func(p *Push) { p.Tag = "a:b" }, false},
		{"neither tag nor digest", func(p *Push) { p.Tag = "" }, false},
		{"bad digest", func(p *Push) { p.Digest = "sha256:abc" }, false},
		{"bad media type", func(p *Push) { p.MediaType = "not a media type" }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := ok
			tc.edit(&p)
			err := validate(p)
			if tc.valid {
				assert.NoError(t, err)
			} else {
				assert.Error(t, err)
			}
		})
	}
}
