package nydus

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// BuilderName is the external builder nydus conversion needs.
const BuilderName = "nydus-image"

// Builder is what probing for the nydus-image builder found.
type Builder struct {
	// Path is the builder's path (as configured, or found on PATH).
	Path string
	// Version is the first line of `nydus-image --version`.
	Version string
	// Found is true when the builder ran.
	Found bool
	// Reason says why the builder is not usable, when it is not.
	Reason string
}

// probes caches one probe per configured path for the life of the process:
// the builder is asked for its version once, the first time nydus is needed
// or capabilities are listed, never at start-up.
var probes sync.Map // path -> *probe

type probe struct {
	once sync.Once
	b    Builder
}

// Probe looks for the builder at path (or on PATH when path is empty) and
// asks it for its version, once per path per process; later calls return
// the first answer. It never fails: what it found is in the result.
func Probe(ctx context.Context, path string) Builder {
	v, _ := probes.LoadOrStore(path, &probe{})
	p := v.(*probe)
	p.once.Do(func() { p.b = run(context.WithoutCancel(ctx), path) })
	return p.b
}

func run(ctx context.Context, path string) Builder {
	b := Builder{Path: path}
	if path == "" {
		found, err := exec.LookPath(BuilderName)
		if err != nil {
			b.Reason = fmt.Sprintf("%s not found on PATH", BuilderName)
			return b
		}
		b.Path = found
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, b.Path, "--version").CombinedOutput()
	if err != nil {
		b.Reason = fmt.Sprintf("%s --version: %v", b.Path, err)
		return b
	}
	b.Version, _, _ = strings.Cut(strings.TrimSpace(string(out)), "\n")
	b.Found = true
	return b
}
