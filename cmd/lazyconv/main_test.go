package main

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/internal/imagegen"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// lazyconv runs the CLI in-process against root and returns its output.
func lazyconv(t *testing.T, root string, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	cmd := app()
	cmd.Writer = &out
	cmd.ErrWriter = &out
	err := cmd.Run(context.Background(), append([]string{"lazyconv", "--root", root}, args...))
	return out.String(), err
}

func writeArchive(t *testing.T, dir, name string) string {
	t.Helper()
	tarball := imagegen.TarBytes([]imagegen.Entry{
		{Header: tarHeader("etc/", 0o755, true)},
		{Header: tarHeader("etc/motd", 0o644, false), Body: bytes.Repeat([]byte("hello lazy world\n"), 1000)},
	})
	img := imagegen.Image{Name: name, Layers: []imagegen.Layer{
		{MediaType: ocispec.MediaTypeImageLayerGzip, Blob: imagegen.Compress(tarball, "gzip")},
		{MediaType: ocispec.MediaTypeImageLayerZstd, Blob: imagegen.Compress(tarball, "zstd")},
	}}
	p := filepath.Join(dir, "image.tar")
	require.NoError(t, imagegen.WriteOCIArchiveFile(p, img))
	return p
}

func TestCLIConvertVerifyExportRoundTrip(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	archive := writeArchive(t, dir, "example.com/cli:v1")

	out, err := lazyconv(t, root, "image", "import", archive)
	require.NoError(t, err, out)
	assert.Contains(t, out, "imported example.com/cli:v1")

	out, err = lazyconv(t, root, "image", "convert", "--estargz", "--oci", "example.com/cli:v1", "example.com/cli:esgz")
	require.NoError(t, err, out)
	assert.Contains(t, out, "committed")
	assert.Contains(t, out, "example.com/cli:esgz sha256:")

	out, err = lazyconv(t, root, "image", "verify", "example.com/cli:esgz")
	require.NoError(t, err, out)
	assert.Contains(t, out, "2 lazy-pull layers verified")

	// Verifying the source fails: its layers are not eStargz.
	out, err = lazyconv(t, root, "image", "verify", "example.com/cli:v1")
	require.Error(t, err, out)

	out, err = lazyconv(t, root, "image", "convert", "--estargz", "--oci", "example.com/cli:v1", "example.com/cli:again")
	require.NoError(t, err, out)
	assert.Contains(t, out, "cached", out)
	assert.NotContains(t, out, "committed")

	exported := filepath.Join(dir, "esgz.tar")
	out, err = lazyconv(t, root, "image", "export", exported, "example.com/cli:esgz")
	require.NoError(t, err, out)
	other := filepath.Join(dir, "other")
	out, err = lazyconv(t, other, "image", "import", exported)
	require.NoError(t, err, out)
	out, err = lazyconv(t, other, "image", "verify", "example.com/cli:esgz")
	require.NoError(t, err, out)

	out, err = lazyconv(t, root, "image", "ls", "-q")
	require.NoError(t, err, out)
	assert.Equal(t, "example.com/cli:again\nexample.com/cli:esgz\nexample.com/cli:v1\n", out)

	out, err = lazyconv(t, root, "image", "rm", "example.com/cli:again", "example.com/cli:esgz", "example.com/cli:v1")
	require.NoError(t, err, out)
	out, err = lazyconv(t, root, "gc")
	require.NoError(t, err, out)
	out, err = lazyconv(t, root, "content", "ls")
	require.NoError(t, err, out)
	assert.Equal(t, "DIGEST  SIZE  LABELS\n", out, "gc leaves nothing once the images are gone")
}

func TestCLIContentCheckUsesTheCache(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	_, err := lazyconv(t, root, "image", "import", writeArchive(t, dir, "example.com/cli:v1"))
	require.NoError(t, err)
	out, err := lazyconv(t, root, "content", "ls")
	require.NoError(t, err)
	var layer string
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "KiB") || strings.Contains(line, " B ") {
			if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], "sha256:") {
				layer = f[0]
			}
		}
	}
	require.NotEmpty(t, layer, out)
	out, err = lazyconv(t, root, "content", "check", layer)
	require.NoError(t, err)
	assert.Contains(t, out, "not eStargz (checked footer and TOC)")
	out, err = lazyconv(t, root, "content", "check", layer)
	require.NoError(t, err)
	assert.Contains(t, out, "not eStargz (cached)")

	_, err = lazyconv(t, root, "content", "check", "not-a-digest")
	require.Error(t, err)
}

func TestCLIRejectsBadArguments(t *testing.T) {
	root := t.TempDir()
	for _, args := range [][]string{
		{"image", "convert", "--estargz", "only-one"},
		{"image", "convert", "--estargz", "--uncompress", "a", "b"},
		{"image", "convert", "--estargz", "--estargz-compression-level", "11", "a", "b"},
		{"image", "convert", "--estargz", "--platform", "not/a/valid/platform/x", "a", "b"},
		{"image", "convert", "--estargz", "missing:image", "b"},
		{"image", "import"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			_, err := lazyconv(t, root, args...)
			require.Error(t, err)
		})
	}
}

func tarHeader(name string, mode int64, isDir bool) tar.Header {
	h := tar.Header{Name: name, Mode: mode, Typeflag: tar.TypeReg}
	if isDir {
		h.Typeflag = tar.TypeDir
	}
	return h
}

func TestCLIZstdChunked(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	_, err := lazyconv(t, root, "image", "import", writeArchive(t, dir, "example.com/cli:v1"))
	require.NoError(t, err)
	out, err := lazyconv(t, root, "image", "convert", "--zstdchunked", "example.com/cli:v1", "example.com/cli:zc")
	require.NoError(t, err, out)
	assert.Contains(t, out, "committed")
	out, err = lazyconv(t, root, "image", "verify", "example.com/cli:zc")
	require.NoError(t, err, out)
	assert.Contains(t, out, "2 lazy-pull layers verified")
	_, err = lazyconv(t, root, "image", "convert", "--zstdchunked", "--estargz", "example.com/cli:v1", "x")
	require.Error(t, err)
	_, err = lazyconv(t, root, "image", "convert", "--zstdchunked", "--zstdchunked-compression-level", "0", "example.com/cli:v1", "x")
	require.Error(t, err)
}

func TestCLIOptimize(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	_, err := lazyconv(t, root, "image", "import", writeArchive(t, dir, "example.com/cli:v1"))
	require.NoError(t, err)
	record := filepath.Join(dir, "record.json")
	require.NoError(t, os.WriteFile(record, []byte(`{"path":"/etc/motd"}`+"\n"+`{"path":"etc/motd","layerIndex":0}`+"\n"), 0o644))
	applied := filepath.Join(dir, "applied.json")
	out, err := lazyconv(t, root, "image", "optimize", "--record-in", record, "--record-out", applied, "--oci", "example.com/cli:v1", "example.com/cli:opt")
	require.NoError(t, err, out)
	assert.Contains(t, out, "not lossless")
	out, err = lazyconv(t, root, "image", "verify", "example.com/cli:opt")
	require.NoError(t, err, out)
	b, err := os.ReadFile(applied)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	require.Len(t, lines, 2, "the topmost layer for the entry without index, layer 0 for the other")
	assert.Contains(t, lines[0], `"layerIndex":0`)
	assert.Contains(t, lines[1], `"layerIndex":1`)

	require.NoError(t, os.WriteFile(record, []byte(`{"path":"../../etc/shadow"}`), 0o644))
	_, err = lazyconv(t, root, "image", "optimize", "--record-in", record, "example.com/cli:v1", "example.com/cli:bad")
	require.Error(t, err)
}

func TestCLIOptimizeRun(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("--run needs root for runc and fanotify (CI runs as root)")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("no runc on PATH (.ci/run installs Debian's runc)")
	}
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	_, err := lazyconv(t, root, "image", "import", writeArchive(t, dir, "example.com/cli:v1"))
	require.NoError(t, err)
	out, err := lazyconv(t, root, "image", "optimize", "--run", "--args", `["/bin/app"]`, "example.com/cli:v1", "example.com/cli:opt")
	require.Error(t, err, "the image has no /bin/app: runc fails, clearly")
	assert.Contains(t, err.Error(), "runc")
	_ = out
	_, err = lazyconv(t, root, "image", "optimize", "--run", "--record-in", "x", "example.com/cli:v1", "y")
	require.Error(t, err)
	_, err = lazyconv(t, root, "image", "optimize", "--run", "--args", "not json", "example.com/cli:v1", "y")
	require.Error(t, err)
}
