package integration

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func runCtr(t *testing.T, address string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(bins.ctr, append([]string{"--address", address, "-n", "default"}, args...)...).CombinedOutput()
	return string(out), err
}

// `ctr images convert --estargz --oci` converts in the daemon's plugin and
// the result verifies; upstream's own conversions are upstream's; against a
// stock containerd, one clear line.
func TestCtrImagesConvert(t *testing.T) {
	requireRoot(t)
	d := startDaemon(t, bins.containerdLazyconv, testConfig)
	img := newTestImage(t, "example.com/ctr/app:v1", 0)
	out, err := runCtr(t, d.address, "images", "import", "--local", img.archive)
	require.NoError(t, err, out)

	out, err = runCtr(t, d.address, "images", "convert", "--estargz", "--oci", "example.com/ctr/app:v1", "example.com/ctr/app:esgz")
	require.NoError(t, err, out)
	assert.Contains(t, out, "committed", "live progress")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	assert.Regexp(t, `^sha256:[0-9a-f]{64}$`, lines[len(lines)-1], "the new digest last, as upstream prints it")
	out = mustLazyconv(t, "--address", d.address, "image", "verify", "example.com/ctr/app:esgz")
	assert.Contains(t, out, "3 lazy-pull layers verified")

	out, err = runCtr(t, d.address, "images", "convert", "--zstdchunked", "--zstdchunked-compression-level", "9", "example.com/ctr/app:v1", "example.com/ctr/app:zc")
	require.NoError(t, err, out)
	out = mustLazyconv(t, "--address", d.address, "image", "verify", "example.com/ctr/app:zc")
	assert.Contains(t, out, "3 lazy-pull layers verified")

	// Upstream's --uncompress is upstream's converter, in the client.
	out, err = runCtr(t, d.address, "images", "convert", "--uncompress", "--oci", "example.com/ctr/app:v1", "example.com/ctr/app:tar")
	require.NoError(t, err, out)
	assert.NotContains(t, out, "committed", "no lazyconv progress for upstream's own conversion")
	out, err = runCtr(t, d.address, "images", "ls", "-q")
	require.NoError(t, err, out)
	assert.Contains(t, out, "example.com/ctr/app:tar")

	out, err = runCtr(t, d.address, "images", "convert", "--estargz", "--uncompress", "example.com/ctr/app:v1", "x")
	require.Error(t, err, out)
	assert.Contains(t, out, "upstream")

	stock := startDaemon(t, bins.stockContainerd, stockConfig)
	out, err = runCtr(t, stock.address, "images", "convert", "--estargz", "--oci", "example.com/ctr/app:v1", "x")
	require.Error(t, err, out)
	assert.Contains(t, out, "no lazyconv plugin")
}
