package recorder_test

import (
	"archive/tar"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/internal/imagegen"
	"github.com/lazyconv/lazyconv/recorder"
)

// reader is the workload: it reads two files and nothing else.
const reader = `package main

import "os"

func main() {
	for _, p := range []string{"/etc/app.conf", "/data/used"} {
		if _, err := os.ReadFile(p); err != nil {
			panic(err)
		}
	}
}
`

func TestRunRecordsWhatTheEntrypointReads(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("recording a workload runs runc and fanotify, which need root (CI runs as root)")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("no runc on PATH (.ci/run installs Debian's runc)")
	}
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "main.go"), []byte(reader), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module reader\n\ngo 1.22\n"), 0o644))
	build := exec.Command("go", "build", "-o", "app", ".")
	build.Dir = dir
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-buildvcs=false")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "%s", out)
	app, err := os.ReadFile(filepath.Join(dir, "app"))
	require.NoError(t, err)

	f := layeredImage(t)
	layers := [][]imagegen.Entry{
		{dir0("bin/"), {Header: tar.Header{Name: "bin/app", Typeflag: tar.TypeReg, Mode: 0o755}, Body: app},
			dir0("etc/"), reg("etc/app.conf", "conf"), dir0("data/"), reg("data/unused", "never read")},
		{dir0("data/"), reg("data/used", "read at start")},
	}
	img := imagegen.Image{Name: "reader:v1", Config: &ocispec.ImageConfig{Entrypoint: []string{"/bin/app"}}}
	for _, l := range layers {
		img.Layers = append(img.Layers, imagegen.Layer{MediaType: ocispec.MediaTypeImageLayerGzip, Blob: imagegen.Compress(imagegen.TarBytes(l), "gzip")})
	}
	target, err := imagegen.Store(f.ctx, f.store.ContentStore(), f.store.ImageStore(), img)
	require.NoError(t, err)

	rec, err := recorder.RunAndRecord(f.ctx, f.store.ContentStore(), target, platforms.All, recorder.RunOptions{Period: 20 * time.Second})
	require.NoError(t, err)
	layerOf := map[string]int{}
	for _, e := range rec.Entries() {
		layerOf[e.Path] = *e.LayerIndex
	}
	t.Logf("recorded: %v", layerOf)
	assert.Equal(t, 0, layerOf["etc/app.conf"])
	assert.Equal(t, 1, layerOf["data/used"])
	assert.NotContains(t, layerOf, "data/unused", "a file the workload never reads is not recorded")
}

func dir0(name string) imagegen.Entry { return dir(name) }
