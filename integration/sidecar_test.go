package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// startSidecar runs lazyconvd next to the containerd at containerdAddress.
func startSidecar(t *testing.T, containerdAddress string) string {
	return startSidecarWith(t, containerdAddress, "")
}

// startSidecarWith runs lazyconvd with a config file holding config.
func startSidecarWith(t *testing.T, containerdAddress, config string) string {
	t.Helper()
	dir := shortTempDir(t)
	sock := filepath.Join(dir, "lazyconvd.sock")
	logf, err := os.Create(filepath.Join(dir, "lazyconvd.log"))
	require.NoError(t, err)
	cfgPath := filepath.Join(dir, "absent.toml")
	if config != "" {
		cfgPath = filepath.Join(dir, "lazyconvd.toml")
		require.NoError(t, os.WriteFile(cfgPath, []byte(config), 0o644))
	}
	cmd := exec.Command(bins.lazyconvd, "--config", cfgPath, "--address", sock, "--containerd-address", containerdAddress)
	cmd.Stdout, cmd.Stderr = logf, logf
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logf.Close()
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if fi, err := os.Stat(sock); err == nil {
			assert.Equal(t, os.FileMode(0o660), fi.Mode().Perm(), "the sidecar's socket is 0660")
			return sock
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("lazyconvd did not come up:\n%s", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestSidecarConvertsToTheSameDigestsAsThePluginAndEmbedded(t *testing.T) {
	requireRoot(t)
	img := newTestImage(t, "example.com/app:v1", 0)
	convert := func(args ...string) string {
		t.Helper()
		mustLazyconv(t, append(args, "image", "import", img.archive)...)
		out := mustLazyconv(t, append(args, "image", "convert", "--estargz", "--oci", "-q", img.name, "example.com/app:esgz")...)
		return strings.TrimSpace(out)
	}

	stock := startDaemon(t, bins.stockContainerd, stockConfig)
	out, err := lazyconv(t, "--address", stock.address, "image", "convert", "--estargz", "--oci", img.name, "x")
	require.Error(t, err, "a stock containerd has no conversion API")
	assert.Contains(t, out, "serves no lazyconv API")
	assert.Contains(t, out, "--converter-address")
	assert.Contains(t, out, "--root")

	sidecar := startSidecar(t, stock.address)
	viaSidecar := convert("--address", stock.address, "--converter-address", sidecar)
	c := stock.client(t)
	assertConvertedImage(t, nsContext("default"), c.ContentStore(), c.ImageService(), "example.com/app:esgz", img)

	plugin := startDaemon(t, bins.containerdLazyconv, testConfig)
	inDaemon := convert("--address", plugin.address)
	embedded := convert("--root", filepath.Join(t.TempDir(), "root"))

	assert.Regexp(t, `^sha256:[0-9a-f]{64}$`, viaSidecar)
	assert.Equal(t, inDaemon, viaSidecar)
	assert.Equal(t, inDaemon, embedded)
}
