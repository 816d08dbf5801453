package recorder

import (
	"bytes"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

// FuzzRead parses arbitrary records: they may be refused, never panic, and
// no path that leaves the root or names it gets through.
func FuzzRead(f *testing.F) {
	f.Add([]byte(`{"path":"/usr/bin/app","manifestDigest":"sha256:00","layerIndex":1}` + "\n"))
	f.Add([]byte(`{"path":"../../etc/shadow"}`))
	f.Add([]byte(`{"path":"a/./b//c/"}` + "\n\n" + `{"path":"/"}`))
	f.Fuzz(func(t *testing.T, record []byte) {
		entries, err := Read(bytes.NewReader(record))
		if err != nil {
			if !errdefs.IsInvalidArgument(err) && !strings.Contains(err.Error(), "token too long") {
				t.Fatalf("error without the InvalidArgument class: %v", err)
			}
			return
		}
		for _, e := range entries {
			if e.Path == "" || strings.HasPrefix(e.Path, "/") || e.Path == ".." || strings.HasPrefix(e.Path, "../") || strings.Contains(e.Path, "/../") {
				t.Fatalf("path %q got through", e.Path)
			}
		}
	})
}
