package notifications

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/containerd/errdefs"
)

// FuzzParse checks that Parse never panics, fails only with invalid-argument
// errors, and gives valid, distinct pushes whose Ref containerd can parse
// back. The seeds (run by every go test) are the fixtures and a few edge
// cases.
func FuzzParse(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.json"))
	if err != nil {
		f.Fatal(err)
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(MediaTypeDistributionEventsV2, b)
		f.Add("", b)
	}
	for _, seed := range []struct{ ct, body string }{
		{MediaTypeDistributionEventsV1, `{"events":[{"action":"push","target":{"repository":"a","url":"http://h/v2/a/manifests/t"}}]}`},
		{MediaTypeDistributionEventsV2, `{"events":[{"action":"push","target":{"mediaType":"application/vnd.oci.image.index.v1+json","url":"%zz"}}]}`},
		{MediaTypeDistributionEventsV2, `{"events":[{"action":"push","target":{"tag":"v1","url":"//[::1]:5000/v2//manifests/"}}]}`},
		{MediaTypeJSON, `{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"tag":"sha256:","resource_url":"h/@"}]}}`},
		{MediaTypeCloudEvents, `{"specversion":"1.0","type":"harbor.artifact.pushed","data_base64":"eyJyZXNvdXJjZXMiOltdfQ=="}`},
		{"application/json; charset=\"", `{"events":{}}`},
		{"", `null`},
		{"", "\xff"},
	} {
		f.Add(seed.ct, []byte(seed.body))
	}

	f.Fuzz(func(t *testing.T, contentType string, body []byte) {
		pushes, err := Parse(contentType, body)
		if err != nil {
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("error %v does not wrap ErrInvalidArgument", err)
			}
			if pushes != nil {
				t.Fatalf("pushes %v with error %v", pushes, err)
			}
			return
		}
		seen := map[pushKey]bool{}
		for _, p := range pushes {
			if err := validate(p); err != nil {
				t.Fatalf("invalid push %+v: %v", p, err)
			}
			k := pushKey{p.Host, p.Repository, p.Tag, p.Digest}
			if seen[k] {
				t.Fatalf("duplicate push %+v", p)
			}
			seen[k] = true
			spec, err := reference.Parse(p.Ref())
			if err != nil {
				t.Fatalf("push %+v: ref %q does not parse: %v", p, p.Ref(), err)
			}
			if spec.Locator != p.Host+"/"+p.Repository {
				t.Fatalf("push %+v: ref %q has locator %q", p, p.Ref(), spec.Locator)
			}
		}
	})
}
