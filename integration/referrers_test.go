package integration

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/labels"
	"github.com/lazyconv/lazyconv/remote"
)

// What go-containerregistry v0.22.1's pkg/registry (with
// WithReferrersSupport(true)) does with referrers, against the
// distribution spec v1.1 (TestReferrersRegistryAsRecorded holds it to this):
//   - GET /v2/<name>/referrers/<digest> answers an OCI image index (Content-Type
//     application/vnd.oci.image.index.v1+json) of the manifests of <name>
//     whose subject is <digest>, in no set order, with their annotations.
//   - Each one's artifactType is its config's mediaType, always: the
//     manifest's own artifactType is ignored (the spec: the manifest's
//     artifactType, the config's mediaType only when it has none). So every
//     artifact with the empty config, lazyconv's included, is listed as
//     "application/vnd.oci.empty.v1+json"; an index is listed with none,
//     whatever its own artifactType.
//   - ?artifactType= is ignored: everything is listed, and no
//     OCI-Filters-Applied header says so (which the spec allows: the client
//     filters).
//   - A manifest PUT with a subject is answered without the OCI-Subject
//     header (the spec: a registry with the referrers API MUST send it; a
//     client that does not see it MUST update the tag schema's index).
//   - A repository it has no manifest in is 404 NAME_UNKNOWN (the spec: a
//     registry with the API MUST NOT answer a referrers request 404; a
//     client then falls back to the tag schema, which finds nothing); a
//     subject with no referrers is 200 with an empty index; a malformed
//     digest is 400.
//   - No Link pagination; tags/list lists every tag but digests, so a
//     "sha256-<hex>" tag would show.
//   - Blobs are one store for all repositories (a blob pushed anywhere is
//     there in every repository), and a cross-repository mount is not
//     done: POST ?mount= is answered 202, an upload.
// lazyconv publishes a referrer by pushing its manifest and then listing
// the subject's referrers without a filter: listed, it writes no tag
// (containerd's pusher shows it no OCI-Subject header, and it reads none).
// It looks referrers up by artifactType; a listing's entry of the empty
// config's media type it reads the manifest of (remote.ListReferrers).

// startReferrersRegistry starts go-containerregistry's registry with the
// referrers API on a free port of 127.0.0.1 (its blobs on disk, its
// manifests in memory).
func startReferrersRegistry(t *testing.T) *registry {
	t.Helper()
	dir := shortTempDir(t)
	r := &registry{logPath: filepath.Join(dir, "access.log"), referrersAPI: true}
	addrFile := filepath.Join(dir, "addr")
	stderr, err := os.Create(filepath.Join(dir, "stderr.log"))
	require.NoError(t, err)
	cmd := exec.Command(bins.referrersRegistry, "-addr", "127.0.0.1:0", "-addr-file", addrFile,
		"-access-log", r.logPath, "-blobs", filepath.Join(dir, "blobs"))
	cmd.Stdout, cmd.Stderr = stderr, stderr
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		stderr.Close()
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if b, err := os.ReadFile(addrFile); err == nil {
			r.host = strings.TrimSpace(string(b))
			if resp, err := http.Get("http://" + r.host + "/v2/"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return r
				}
			}
		}
		select {
		case err := <-exited:
			b, _ := os.ReadFile(stderr.Name())
			t.Fatalf("the referrers registry exited: %v\n%s", err, b)
		default:
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(stderr.Name())
			t.Fatalf("the referrers registry did not come up:\n%s", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// fleetRegistries are the registries the fleet tests run against: one
// without the referrers API (clients keep the tag schema) and one with it.
var fleetRegistries = []struct {
	name  string
	start func(t *testing.T) *registry
}{
	{"distribution", startRegistry},
	{"referrers-api", startReferrersRegistry},
}

// forEachRegistry runs test as a subtest on each of fleetRegistries, each
// with a registry of its own.
func forEachRegistry(t *testing.T, test func(t *testing.T, reg *registry)) {
	requireRoot(t)
	for _, r := range fleetRegistries {
		t.Run(r.name, func(t *testing.T) { test(t, r.start(t)) })
	}
}

// do sends one request to the registry and returns its answer, read.
func (r *registry) do(t *testing.T, method, path string, body []byte, header map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+r.host+path, bytes.NewReader(body))
	require.NoError(t, err)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, b
}

// getJSON GETs path into v, which must be answered 200.
func (r *registry) getJSON(t *testing.T, path string, v any, accept ...string) http.Header {
	t.Helper()
	resp, b := r.do(t, http.MethodGet, path, nil, map[string]string{"Accept": strings.Join(accept, ", ")})
	require.Equal(t, http.StatusOK, resp.StatusCode, "GET %s: %s", path, b)
	require.NoError(t, json.Unmarshal(b, v), "GET %s: %s", path, b)
	return resp.Header
}

// manifest reads the image manifest repo@d.
func (r *registry) manifest(t *testing.T, repo string, d digest.Digest) ocispec.Manifest {
	t.Helper()
	var m ocispec.Manifest
	r.getJSON(t, "/v2/"+repo+"/manifests/"+d.String(), &m, ocispec.MediaTypeImageManifest)
	return m
}

// listReferrers lists subject's referrers in repo as a client would: through
// the referrers API, or else the tag schema's index.
func (r *registry) listReferrers(t *testing.T, repo string, subject digest.Digest) []ocispec.Descriptor {
	t.Helper()
	var index ocispec.Index
	if r.referrersAPI {
		r.getJSON(t, "/v2/"+repo+"/referrers/"+subject.String(), &index)
		return index.Manifests
	}
	resp, b := r.do(t, http.MethodGet, "/v2/"+repo+"/manifests/"+strings.Replace(subject.String(), ":", "-", 1), nil,
		map[string]string{"Accept": ocispec.MediaTypeImageIndex})
	if resp.StatusCode == http.StatusNotFound {
		return nil
	}
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", b)
	require.NoError(t, json.Unmarshal(b, &index))
	return index.Manifests
}

// referrersTagRE is the referrers tag schema's tag.
var referrersTagRE = regexp.MustCompile(`^sha256-[0-9a-f]{64}$`)

// referrersTags lists the tag schema's tags in every repository of the
// registry ("repository:tag").
func (r *registry) referrersTags(t *testing.T) []string {
	t.Helper()
	var catalog struct {
		Repositories []string `json:"repositories"`
	}
	r.getJSON(t, "/v2/_catalog?n=1000", &catalog)
	require.NotEmpty(t, catalog.Repositories)
	var out []string
	for _, repo := range catalog.Repositories {
		var tags struct {
			Tags []string `json:"tags"`
		}
		r.getJSON(t, "/v2/"+repo+"/tags/list", &tags)
		for _, tag := range tags.Tags {
			if referrersTagRE.MatchString(tag) {
				out = append(out, repo+":"+tag)
			}
		}
	}
	return out
}

// publishedRE finds what a push says it published: "published conversion
// HOST/REPO@DIGEST" (or "published record").
var publishedRE = regexp.MustCompile(`published (?:conversion|record) [^/\s]+/(\S+)@(sha256:[0-9a-f]{64})`)

// assertPublished checks that each referrer out names as published is
// listed as a referrer of its subject where it is, by the referrers API
// on a registry with one (and that no tag schema index was written
// anywhere), else by the tag schema's index; with artifactType as the
// registry lists it: lazyconv's own on distribution (the tag index is
// lazyconv's), the config's media type on go-containerregistry's.
func assertPublished(t *testing.T, reg *registry, out string, artifactType string, annotations map[string]string) {
	t.Helper()
	found := publishedRE.FindAllStringSubmatch(out, -1)
	require.NotEmpty(t, found, "nothing published:\n%s", out)
	for _, f := range found {
		repo, d := f[1], digest.Digest(f[2])
		m := reg.manifest(t, repo, d)
		require.NotNil(t, m.Subject, "%s@%s has a subject", repo, d)
		assert.Equal(t, artifactType, m.ArtifactType)
		listedAs := artifactType
		if reg.referrersAPI {
			listedAs = ocispec.MediaTypeEmptyJSON // go-containerregistry lists the config's media type
		}
		var listed *ocispec.Descriptor
		for _, l := range reg.listReferrers(t, repo, m.Subject.Digest) {
			if l.Digest == d {
				listed = &l
			}
		}
		if assert.NotNil(t, listed, "%s@%s is listed as a referrer of %s", repo, d, m.Subject.Digest) {
			assert.Equal(t, listedAs, listed.ArtifactType)
			for k, v := range annotations {
				assert.Equal(t, v, listed.Annotations[k], "annotation %s", k)
			}
		}
	}
	if reg.referrersAPI {
		assert.Empty(t, reg.referrersTags(t), "no referrers tag schema index beside the referrers API")
	}
}

// The registry with the referrers API does what the comment above says,
// with lazyconv's own referrer manifests.
func TestReferrersRegistryAsRecorded(t *testing.T) {
	requireRoot(t) // the harness builds the registry only as root
	reg := startReferrersRegistry(t)
	put := func(repo, ref, mediaType string, b []byte) *http.Response {
		t.Helper()
		resp, body := reg.do(t, http.MethodPut, "/v2/"+repo+"/manifests/"+ref, b, map[string]string{"Content-Type": mediaType})
		require.Equal(t, http.StatusCreated, resp.StatusCode, "%s", body)
		return resp
	}
	empty := ocispec.DescriptorEmptyJSON
	resp, body := reg.do(t, http.MethodPost, "/v2/probe/app/blobs/uploads/?digest="+empty.Digest.String(), empty.Data, nil)
	require.Equal(t, http.StatusCreated, resp.StatusCode, "%s", body)
	image, err := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: empty, Layers: []ocispec.Descriptor{}})
	require.NoError(t, err)
	put("probe/app", "v1", ocispec.MediaTypeImageManifest, image)
	subject := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(image), Size: int64(len(image))}

	conv := remote.ConversionReferrer(subject, "estargz", digest.FromString("converted"))
	convDesc, convBytes, err := conv.Manifest()
	require.NoError(t, err)
	resp = put("probe/app", convDesc.Digest.String(), ocispec.MediaTypeImageManifest, convBytes)
	assert.Empty(t, resp.Header.Get("OCI-Subject"), "no OCI-Subject header on a manifest with a subject")
	typed, err := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{MediaType: "application/vnd.example.signature", Digest: empty.Digest, Size: empty.Size},
		Layers: []ocispec.Descriptor{}, Subject: &subject})
	require.NoError(t, err)
	put("probe/app", "signature", ocispec.MediaTypeImageManifest, typed)

	for _, query := range []string{"", "?artifactType=" + labels.ConversionArtifactType} {
		var index ocispec.Index
		h := reg.getJSON(t, "/v2/probe/app/referrers/"+subject.Digest.String()+query, &index)
		assert.Equal(t, ocispec.MediaTypeImageIndex, h.Get("Content-Type"))
		assert.Empty(t, h.Get("OCI-Filters-Applied"), "%q: no filter applied", query)
		byDigest := map[digest.Digest]ocispec.Descriptor{}
		for _, d := range index.Manifests {
			byDigest[d.Digest] = d
		}
		assert.Len(t, byDigest, 2, "%q: both referrers listed, unfiltered", query)
		assert.Equal(t, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: convDesc.Digest, Size: convDesc.Size,
			ArtifactType: ocispec.MediaTypeEmptyJSON, Annotations: convDesc.Annotations}, byDigest[convDesc.Digest],
			"lazyconv's referrer listed with its annotations, but as its config's media type, not its artifactType %s", convDesc.ArtifactType)
		assert.Equal(t, "application/vnd.example.signature", byDigest[digest.FromBytes(typed)].ArtifactType)
	}

	var none ocispec.Index
	reg.getJSON(t, "/v2/probe/app/referrers/"+digest.FromString("nothing").String(), &none)
	assert.Empty(t, none.Manifests, "a subject with no referrers: an empty index")
	resp, body = reg.do(t, http.MethodGet, "/v2/probe/other/referrers/"+subject.Digest.String(), nil, nil)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode, "a repository with no manifest: 404")
	assert.Contains(t, string(body), "NAME_UNKNOWN")
	resp, _ = reg.do(t, http.MethodGet, "/v2/probe/app/referrers/not-a-digest", nil, nil)
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)

	put("probe/app", "sha256-"+subject.Digest.Encoded(), ocispec.MediaTypeImageIndex, []byte(`{"schemaVersion":2,"mediaType":"`+ocispec.MediaTypeImageIndex+`","manifests":[]}`))
	assert.Equal(t, []string{"probe/app:sha256-" + subject.Digest.Encoded()}, reg.referrersTags(t), "tags/list shows a tag schema tag")

	// One blob store for every repository, and no cross-repository mount.
	resp, _ = reg.do(t, http.MethodHead, "/v2/elsewhere/blobs/"+empty.Digest.String(), nil, nil)
	assert.Equal(t, http.StatusOK, resp.StatusCode, "a blob pushed to probe/app is in every repository")
	resp, _ = reg.do(t, http.MethodPost, "/v2/elsewhere/blobs/uploads/?mount="+empty.Digest.String()+"&from=probe/app", nil, nil)
	assert.Equal(t, http.StatusAccepted, resp.StatusCode, "a mount is answered with an upload")
}
