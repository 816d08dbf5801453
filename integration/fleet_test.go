package integration

import (
	"io"
	stdlog "log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/labels"
)

// convertedDigest is the digest a conversion's output ends with ("NAME DIGEST").
func convertedDigest(t *testing.T, out string) string {
	t.Helper()
	m := regexp.MustCompile(`(sha256:[0-9a-f]{64})\s*$`).FindStringSubmatch(out)
	require.NotNil(t, m, "no digest at the end of:\n%s", out)
	return m[1]
}

// anyBlobGET reports whether the log has a GET of any of the given blobs.
func anyBlobGET(log string, digests []string) []string {
	var got []string
	for _, d := range digests {
		if strings.Contains(log, "/blobs/"+d+" ") {
			got = append(got, d)
		}
	}
	return got
}

// trustingConfig is testConfig with the plugin trusting publishers.
func trustingConfig(patterns ...string) string {
	return testConfig + "\n[plugins.'io.containerd.grpc.v1.lazyconv']\n  trusted_publishers = [\"" + strings.Join(patterns, "\", \"") + "\"]\n"
}

// lookedUpThrough checks that a lookup in repo (log: the registry's log
// of it) listed the referrers through the referrers API on a registry that
// has one, without reading the tag schema's tag, and else through the tag.
func lookedUpThrough(t *testing.T, reg *registry, log, repo string) {
	t.Helper()
	api := regexp.MustCompile(`"GET /v2/`+regexp.QuoteMeta(repo)+`/referrers/sha256:[0-9a-f]{64}\S* HTTP/1.1" (\d+)`).FindAllStringSubmatch(log, -1)
	tag := `"GET /v2/` + repo + `/manifests/sha256-`
	require.NotEmpty(t, api, "the referrers API was asked:\n%s", log)
	if reg.referrersAPI {
		for _, a := range api {
			assert.Equal(t, "200", a[1], "the referrers API answered")
		}
		assert.NotContains(t, log, tag, "the tag schema's tag is not read")
		return
	}
	assert.Equal(t, "404", api[0][1], "distribution has no referrers API")
	assert.Contains(t, log, tag, "the tag schema's tag is read")
}

// Two nodes, one registry: node A converts and pushes, which publishes the
// conversion as a referrer of the source manifest; node B, from a lazy
// pull, fetches the published layers, checks them against the source and
// adopts them without converting a layer; node C, which trusts the
// repository, adopts it without reading a layer. On a registry without the
// referrers API the referrer is listed in the tag schema's index, on one
// with it by the API alone.
func TestFleetConvertsOnce(t *testing.T) { forEachRegistry(t, testFleetConvertsOnce) }

func testFleetConvertsOnce(t *testing.T, reg *registry) {
	a := startDaemon(t, bins.containerdLazyconv, testConfig)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	metricsB := "http://" + l.Addr().String() + "/v1/metrics"
	l.Close()
	b := startDaemon(t, bins.containerdLazyconv, testConfig+"\n[plugins.'io.containerd.server.v1.metrics']\n  address = \""+l.Addr().String()+"\"\n")
	src := reg.host + "/fleet/app:v1"
	pushSource(t, a, src)

	// Node A: lazy pull, convert, push (publishes the conversion).
	mustLazyconv(t, "--address", a.address, "image", "pull", "--lazy", "--plain-http", src)
	outA := mustLazyconv(t, "--address", a.address, "image", "convert", "--estargz", "--oci", "--plain-http", src, src+"-esgz")
	digestA := convertedDigest(t, outA)
	assert.Contains(t, outA, "committed")
	assert.NotContains(t, outA, "warning", "nothing published yet is no error")
	pushed := mustLazyconv(t, "--address", a.address, "image", "push", "--plain-http", src+"-esgz")
	assert.Contains(t, pushed, "published conversion "+reg.host+"/fleet/app@sha256:")
	assertPublished(t, reg, pushed, labels.ConversionArtifactType, map[string]string{labels.ConvertedManifestAnnotation: digestA})
	again := mustLazyconv(t, "--address", a.address, "image", "push", "--plain-http", src+"-esgz")
	assert.Contains(t, again, "published conversion", "publishing again names the same referrer")
	convertedLayers := sourceLayers(t, a, src+"-esgz")
	var convertedDigests, sourceDigests []string
	for _, l := range convertedLayers {
		convertedDigests = append(convertedDigests, l.Digest.String())
	}

	// Node B: lazy pull of the same source, then convert: verified, nothing converted.
	mustLazyconv(t, "--address", b.address, "image", "pull", "--lazy", "--plain-http", src)
	for _, l := range sourceLayers(t, b, src) {
		sourceDigests = append(sourceDigests, l.Digest.String())
	}
	_, offset := reg.logSince(t, 0)
	outB := mustLazyconv(t, "--address", b.address, "image", "convert", "--estargz", "--oci", "--plain-http", src, src+"-esgz")
	assert.Equal(t, digestA, convertedDigest(t, outB), "node B gets node A's digest")
	assert.Len(t, regexp.MustCompile(`(?m)^sha256:\S+\s+shared .* from registry  verified$`).FindAllString(outB, -1), 3, "every layer shared and verified:\n%s", outB)
	assert.Contains(t, outB, "adopted from "+reg.host+"/fleet/app@"+digestA)
	assert.NotContains(t, outB, "committed")
	assert.Equal(t, 3.0, scrape(t, metricsB, `lazyconv_layers_total{format="estargz",result="shared"}`), "node B's metrics say so")
	assert.Zero(t, scrape(t, metricsB, `lazyconv_layers_total{format="estargz",result="committed"}`))
	log, _ := reg.logSince(t, offset)
	assert.Empty(t, anyBlobGET(log, sourceDigests), "node B read no source layer")
	assert.Len(t, anyBlobGET(log, convertedDigests), 3, "node B fetched the published layers to check them")
	lookedUpThrough(t, reg, log, "fleet/app")

	// Node C trusts the repository: adopted with no layer read.
	c := startDaemon(t, bins.containerdLazyconv, trustingConfig(reg.host+"/fleet/*"))
	mustLazyconv(t, "--address", c.address, "image", "pull", "--lazy", "--plain-http", src)
	_, offset = reg.logSince(t, 0)
	outC := mustLazyconv(t, "--address", c.address, "image", "convert", "--estargz", "--oci", "--plain-http", src, src+"-esgz")
	assert.Equal(t, digestA, convertedDigest(t, outC))
	assert.Len(t, regexp.MustCompile(`(?m)^sha256:\S+\s+shared .* from registry  trusted, unread$`).FindAllString(outC, -1), 3, "adopted unread:\n%s", outC)
	log, offset = reg.logSince(t, offset)
	assert.Empty(t, anyBlobGET(log, append(sourceDigests, convertedDigests...)), "node C read no layer blob")
	// What C adopted unread it does not publish again.
	pushedC := mustLazyconv(t, "--address", c.address, "image", "push", "--plain-http", reg.host+"/fleet/copy:esgz", src+"-esgz")
	assert.NotContains(t, pushedC, "published conversion", "an unread adoption is not vouched for:\n%s", pushedC)
	// What C adopted unread can be checked: verify fetches the layers.
	verified := mustLazyconv(t, "--address", c.address, "image", "verify", src+"-esgz")
	assert.Contains(t, verified, "3 lazy-pull layers verified")
	log, offset = reg.logSince(t, offset)
	assert.Len(t, anyBlobGET(log, convertedDigests), 3, "verify fetched the three converted layers")

	// B pushes elsewhere with cross-repository mounts only (go-containerregistry
	// keeps one blob store for all repositories: the layers are there).
	mustLazyconv(t, "--address", b.address, "image", "push", "--plain-http", reg.host+"/mirror/app:esgz", src+"-esgz")
	log, _ = reg.logSince(t, offset)
	for _, l := range convertedLayers {
		if !reg.referrersAPI {
			assert.Contains(t, log, "mount="+l.Digest.String()+"&from=fleet/app", "layer %s is mounted", l.Digest)
		}
		assert.NotContains(t, log, "digest="+strings.Replace(l.Digest.String(), ":", "%3A", 1), "layer %s is not uploaded", l.Digest)
	}

	// --no-registry-cache converts here.
	outLocal := mustLazyconv(t, "--address", b.address, "image", "convert", "--estargz", "--oci", "--plain-http", "--no-registry-cache", src, src+"-local")
	assert.Equal(t, digestA, convertedDigest(t, outLocal), "a local conversion gives the same digest")
	assert.Contains(t, outLocal, "committed")
	if reg.referrersAPI {
		assert.Empty(t, reg.referrersTags(t), "no referrers tag schema index in any repository")
	}
}

// An access record made on node A travels as a referrer of the source
// manifest and optimizes the image on node B to the same digest.
func TestFleetSharesAccessRecords(t *testing.T) { forEachRegistry(t, testFleetSharesAccessRecords) }

func testFleetSharesAccessRecords(t *testing.T, reg *registry) {
	a := startDaemon(t, bins.containerdLazyconv, testConfig)
	b := startDaemon(t, bins.containerdLazyconv, testConfig)
	src := reg.host + "/records/app:v1"
	pushSource(t, a, src)
	record := filepath.Join(t.TempDir(), "record.jsonl")
	require.NoError(t, os.WriteFile(record, []byte(`{"path":"bin/tool"}`+"\n"+`{"path":"etc/os-release"}`+"\n"), 0o644))

	mustLazyconv(t, "--address", a.address, "image", "pull", "--plain-http", src)
	outA := mustLazyconv(t, "--address", a.address, "image", "optimize", "--plain-http", "--oci", "--record-in", record,
		"--record-out-ref", reg.host+"/records/app:v1-record", src, src+"-opt")
	assert.Contains(t, outA, "published record "+reg.host+"/records/app@sha256:")
	assertPublished(t, reg, outA, labels.RecordArtifactType, nil)

	mustLazyconv(t, "--address", b.address, "image", "pull", "--plain-http", src)
	_, offset := reg.logSince(t, 0)
	outB := mustLazyconv(t, "--address", b.address, "image", "optimize", "--plain-http", "--oci", "--record-in-ref", "auto", src, src+"-opt")
	assert.Contains(t, outB, "(2 files)")
	log, _ := reg.logSince(t, offset)
	lookedUpThrough(t, reg, log, "records/app")
	assert.Equal(t, convertedDigest(t, outA), convertedDigest(t, outB), "the same record optimizes to the same digest")

	byTag := mustLazyconv(t, "--address", b.address, "image", "optimize", "--plain-http", "--oci", "--record-in-ref", reg.host+"/records/app:v1-record", src, src+"-opt2")
	assert.Equal(t, convertedDigest(t, outA), convertedDigest(t, byTag))

	// A record of another manifest (the optimized image's) is refused.
	other := src + "-opt"
	mustLazyconv(t, "--address", a.address, "image", "push", "--plain-http", other)
	mustLazyconv(t, "--address", b.address, "image", "pull", "--plain-http", other)
	out, err := lazyconv(t, "--address", b.address, "image", "optimize", "--plain-http", "--record-in-ref", reg.host+"/records/app:v1-record", other, other+"-opt")
	if assert.Error(t, err) {
		assert.Contains(t, out, "is of manifest")
	}
	if reg.referrersAPI {
		assert.Empty(t, reg.referrersTags(t), "no referrers tag schema index in any repository")
	}
}

// brokenReferrersProxy forwards to a registry but answers 500 to every
// referrers listing (the API and the tag schema's index) and to a manifest
// with a subject.
func brokenReferrersProxy(t *testing.T, registryHost string) string {
	t.Helper()
	target, err := url.Parse("http://" + registryHost)
	require.NoError(t, err)
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ErrorLog = stdlog.New(io.Discard, "", 0)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/referrers/") || strings.Contains(r.URL.Path, "/manifests/sha256-") {
			http.Error(w, "broken", http.StatusInternalServerError)
			return
		}
		proxy.ServeHTTP(w, r)
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: handler}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// A registry that cannot list referrers: conversions are made locally, with
// a warning, and pushes succeed with a warning that nothing was published.
func TestFleetDegradesToLocalConversion(t *testing.T) {
	forEachRegistry(t, testFleetDegradesToLocalConversion)
}

func testFleetDegradesToLocalConversion(t *testing.T, reg *registry) {
	d := startDaemon(t, bins.containerdLazyconv, testConfig)
	proxied := brokenReferrersProxy(t, reg.host)
	src := proxied + "/broken/app:v1"
	pushSource(t, d, src)

	mustLazyconv(t, "--address", d.address, "image", "pull", "--lazy", "--plain-http", src)
	out := mustLazyconv(t, "--address", d.address, "image", "convert", "--zstdchunked", "--plain-http", src, src+"-zstd")
	assert.Contains(t, out, "warning: looking for a published zstdchunked conversion")
	assert.Contains(t, out, "converting here")
	assert.Contains(t, out, "committed")
	pushed := mustLazyconv(t, "--address", d.address, "image", "push", "--plain-http", src+"-zstd")
	assert.Contains(t, pushed, "pushed "+src+"-zstd")
	assert.Contains(t, pushed, "warning: publishing the zstdchunked conversion")

	// Through the registry itself (the tag schema or the referrers API
	// works): the conversion published there is found by a second namespace.
	direct := reg.host + "/broken/app:v1"
	pushed = mustLazyconv(t, "--address", d.address, "image", "push", "--plain-http", direct+"-zstd", src+"-zstd")
	assertPublished(t, reg, pushed, labels.ConversionArtifactType, nil)
	mustLazyconv(t, "--address", d.address, "-n", "other", "image", "pull", "--lazy", "--plain-http", direct)
	_, offset := reg.logSince(t, 0)
	out = mustLazyconv(t, "--address", d.address, "-n", "other", "image", "convert", "--zstdchunked", "--plain-http", direct, direct+"-zstd")
	assert.Contains(t, out, "adopted from "+reg.host+"/broken/app@")
	log, _ := reg.logSince(t, offset)
	lookedUpThrough(t, reg, log, "broken/app")
}

// A rule with push = true pushes what it converts, which publishes the
// conversion: another node adopts it.
func TestFleetRulePushPublishes(t *testing.T) { forEachRegistry(t, testFleetRulePushPublishes) }

func testFleetRulePushPublishes(t *testing.T, reg *registry) {
	a := startDaemon(t, bins.containerdLazyconv, testConfig+`
[[plugins.'io.containerd.grpc.v1.lazyconv'.rules]]
  match = "`+reg.host+`/rules/*"
  format = "zstdchunked"
  tag_suffix = "-zstd"
  push = true
`)
	b := startDaemon(t, bins.containerdLazyconv, testConfig)
	src := reg.host + "/rules/app:v1"
	pushSource(t, b, src)
	mustLazyconv(t, "--address", a.address, "image", "pull", "--lazy", "--plain-http", src)

	resp, body := reg.do(t, http.MethodHead, "/v2/rules/app/manifests/v1", nil, map[string]string{"Accept": ocispec.MediaTypeImageManifest})
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	subject := digest.Digest(resp.Header.Get("Docker-Content-Digest"))
	deadline := time.Now().Add(60 * time.Second)
	for published := false; !published; {
		log, _ := reg.logSince(t, 0)
		if strings.Contains(log, `"PUT /v2/rules/app/manifests/v1-zstd `) {
			for _, l := range reg.listReferrers(t, "rules/app", subject) {
				published = published || l.Annotations[labels.VariantAnnotation] != ""
			}
		}
		if !published {
			require.True(t, time.Now().Before(deadline), "the rule never pushed and published:\n%s", a.logText())
			time.Sleep(100 * time.Millisecond)
		}
	}
	log, _ := reg.logSince(t, 0)
	if reg.referrersAPI {
		assert.NotContains(t, log, `"PUT /v2/rules/app/manifests/sha256-`, "no tag schema index beside the referrers API")
	} else {
		assert.Contains(t, log, `"PUT /v2/rules/app/manifests/sha256-`, "published in the tag schema's index")
	}
	mustLazyconv(t, "--address", b.address, "image", "pull", "--lazy", "--plain-http", src)
	out := mustLazyconv(t, "--address", b.address, "image", "convert", "--zstdchunked", "--plain-http", src, src+"-zstd")
	assert.Contains(t, out, "adopted from "+reg.host+"/rules/app@")
	pulled := mustLazyconv(t, "--address", b.address, "-n", "check", "image", "pull", "--lazy", "--plain-http", src+"-zstd")
	assert.Contains(t, pulled, convertedDigest(t, out), "the rule's pushed image is the one adopted")
	if reg.referrersAPI {
		assert.Empty(t, reg.referrersTags(t), "no referrers tag schema index in any repository")
	}
}
