package remote

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/labels"
)

// configTypedRegistry has the referrers API as go-containerregistry's
// pkg/registry (v0.22.1) serves it: each referrer is listed under its
// config's media type, not its artifactType, and ?artifactType= is not
// applied. listed are the manifests it lists as referrers of subject (by
// the subject they name or not); it serves those and counts their GETs.
type configTypedRegistry struct {
	srv       *httptest.Server
	subject   digest.Digest
	manifests map[digest.Digest][]byte
	listed    []digest.Digest

	mu      sync.Mutex
	gets    map[digest.Digest]int
	queries []string
}

func newConfigTypedRegistry(t *testing.T, subject digest.Digest) *configTypedRegistry {
	r := &configTypedRegistry{subject: subject, manifests: map[digest.Digest][]byte{}, gets: map[digest.Digest]int{}}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *configTypedRegistry) source() Source {
	return Source{Host: r.srv.Listener.Addr().String(), Repository: "app"}
}

// add lists b (a manifest) as a referrer.
func (r *configTypedRegistry) add(b []byte) digest.Digest {
	d := digest.FromBytes(b)
	r.manifests[d] = b
	r.listed = append(r.listed, d)
	return d
}

func (r *configTypedRegistry) getsOf(d digest.Digest) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gets[d]
}

func (r *configTypedRegistry) serve(w http.ResponseWriter, req *http.Request) {
	switch {
	case req.URL.Path == "/v2/":
		w.WriteHeader(http.StatusOK)
	case req.URL.Path == "/v2/app/referrers/"+r.subject.String() && req.Method == http.MethodGet:
		r.mu.Lock()
		r.queries = append(r.queries, req.URL.RawQuery)
		r.mu.Unlock()
		index := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{}}
		for _, d := range r.listed {
			var m ocispec.Manifest
			_ = json.Unmarshal(r.manifests[d], &m)
			index.Manifests = append(index.Manifests, ocispec.Descriptor{MediaType: m.MediaType, Digest: d, Size: int64(len(r.manifests[d])),
				ArtifactType: m.Config.MediaType, Annotations: m.Annotations})
		}
		b, _ := json.Marshal(index)
		w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
		_, _ = w.Write(b)
	case strings.HasPrefix(req.URL.Path, "/v2/app/manifests/"):
		d := digest.Digest(strings.TrimPrefix(req.URL.Path, "/v2/app/manifests/"))
		b, ok := r.manifests[d]
		if !ok {
			http.Error(w, `{"errors":[{"code":"MANIFEST_UNKNOWN"}]}`, http.StatusNotFound)
			return
		}
		if req.Method == http.MethodGet {
			r.mu.Lock()
			r.gets[d]++
			r.mu.Unlock()
		}
		w.Header().Set("Content-Type", ocispec.MediaTypeImageManifest)
		w.Header().Set("Docker-Content-Digest", d.String())
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		if req.Method == http.MethodGet {
			_, _ = w.Write(b)
		}
	default:
		http.Error(w, `{"errors":[{"code":"NAME_UNKNOWN"}]}`, http.StatusNotFound)
	}
}

// A registry listing lazyconv's referrers under the empty config's media
// type, unfiltered: the lookups still find them, by their manifests, and
// only them.
func TestListReferrersReadsWhatARegistryListsUnderTheEmptyConfigType(t *testing.T) {
	subject := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("source"), Size: 512}
	reg := newConfigTypedRegistry(t, subject.Digest)
	manifest := func(r Referrer) []byte {
		t.Helper()
		_, b, err := r.Manifest()
		require.NoError(t, err)
		return b
	}
	conversion := reg.add(manifest(ConversionReferrer(subject, "estargz", digest.FromString("converted"))))
	older := reg.add(manifest(RecordReferrer(subject, []byte("{}\n"), "application/vnd.lazyconv.record.v1+jsonl", time.Unix(1, 0))))
	newer := reg.add(manifest(RecordReferrer(subject, []byte("{}\n{}\n"), "application/vnd.lazyconv.record.v1+jsonl", time.Unix(2, 0))))
	// One listed for subject that names another, one of a type of its own.
	elsewhere := reg.add(manifest(ConversionReferrer(ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest,
		Digest: digest.FromString("other"), Size: 1}, "estargz", digest.FromString("converted"))))
	typed, err := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{MediaType: "application/vnd.example.signature", Digest: ocispec.DescriptorEmptyJSON.Digest, Size: 2},
		Layers: []ocispec.Descriptor{}, Subject: &subject})
	require.NoError(t, err)
	signature := reg.add(typed)

	ctx := context.Background()
	resolver := RegistryOptions{}.ResolverFor(reg.source().Host + "/app")
	got, err := ListReferrers(ctx, resolver, reg.source(), subject.Digest, labels.ConversionArtifactType)
	require.NoError(t, err)
	require.Len(t, got, 1, "the conversion, found by its manifest")
	assert.Equal(t, conversion, got[0].Digest)
	assert.Equal(t, labels.ConversionArtifactType, got[0].ArtifactType, "listed with its manifest's artifactType")
	assert.Equal(t, "estargz", got[0].Annotations[labels.VariantAnnotation])
	for _, d := range []digest.Digest{conversion, older, newer, elsewhere} {
		assert.Equal(t, 1, reg.getsOf(d), "each one listed under the empty config's type is read once (one naming another subject is left out)")
	}
	assert.Zero(t, reg.getsOf(signature), "one listed under a type of its own is not read")
	require.Len(t, reg.queries, 1)
	q, err := url.ParseQuery(reg.queries[0])
	require.NoError(t, err)
	assert.Equal(t, url.Values{"artifactType": {labels.ConversionArtifactType}}, q, "the registry is asked to filter")

	ref, err := LatestRecord(ctx, resolver, reg.source(), subject.Digest)
	require.NoError(t, err)
	assert.Equal(t, reg.source().Ref(newer), ref, "the newest record, by its manifest's annotation")

	all, err := ListReferrers(ctx, resolver, reg.source(), subject.Digest, "")
	require.NoError(t, err)
	assert.Len(t, all, 5, "unfiltered, everything listed, as listed")
	assert.Equal(t, 2, reg.getsOf(conversion), "read by each filtered listing, not by an unfiltered one")
}

// No more than maxRereads manifests are read for one listing.
func TestListReferrersRereadsAtMostSome(t *testing.T) {
	subject := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("source"), Size: 512}
	reg := newConfigTypedRegistry(t, subject.Digest)
	var added []digest.Digest
	for i := range maxRereads + 3 {
		_, b, err := ConversionReferrer(subject, "v"+strconv.Itoa(i), digest.FromString("converted")).Manifest()
		require.NoError(t, err)
		added = append(added, reg.add(b))
	}
	resolver := RegistryOptions{}.ResolverFor(reg.source().Host + "/app")
	got, err := ListReferrers(context.Background(), resolver, reg.source(), subject.Digest, labels.ConversionArtifactType)
	require.NoError(t, err)
	assert.Len(t, got, maxRereads)
	reads := 0
	for _, d := range added {
		reads += reg.getsOf(d)
	}
	assert.Equal(t, maxRereads, reads)
}
