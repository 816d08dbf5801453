package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/internal/imagegen"
)

const daemonConfig = `version = 4
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime"]
`

// compareModes converts the same image in-daemon (containerd-lazyconv), through
// the lazyconvd sidecar next to a stock containerd, and embedded, each with
// the lazyconv CLI, and prints throughputs and ratios.
func compareModes(work, binDir string, layers []generated, runs int) error {
	bin := func(name string) string { return filepath.Join(binDir, name) }
	if !canRun("in-daemon vs sidecar vs embedded", binDir, "lazyconv", "lazyconvd", "containerd-lazyconv", "stock/containerd") {
		return nil
	}
	archive := filepath.Join(work, "modes.tar")
	if err := writeArchive(archive, "bench/modes:src", layers); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("/tmp", "lcb")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	plugin, err := startContainerd(bin("containerd-lazyconv"), filepath.Join(dir, "p"))
	if err != nil {
		return err
	}
	defer plugin.stop()
	stock, err := startContainerd(bin("stock/containerd"), filepath.Join(dir, "s"))
	if err != nil {
		return err
	}
	defer stock.stop()
	sidecarSock := filepath.Join(dir, "lazyconvd.sock")
	sidecar := exec.Command(bin("lazyconvd"), "--config", filepath.Join(dir, "none.toml"), "--address", sidecarSock, "--containerd-address", stock.address)
	if err := sidecar.Start(); err != nil {
		return err
	}
	defer func() { _ = sidecar.Process.Kill(); _ = sidecar.Wait() }()
	if err := waitFor(func() bool { _, err := os.Stat(sidecarSock); return err == nil }); err != nil {
		return fmt.Errorf("lazyconvd: %w", err)
	}

	modes := []struct {
		name string
		args func(run int) []string
	}{
		{"in-daemon (containerd-lazyconv)", func(run int) []string { return []string{"--address", plugin.address, "-n", fmt.Sprintf("r%d", run)} }},
		{"sidecar (lazyconvd + containerd)", func(run int) []string {
			return []string{"--address", stock.address, "--converter-address", sidecarSock, "-n", fmt.Sprintf("r%d", run)}
		}},
		{"embedded (--root)", func(run int) []string { return []string{"--root", filepath.Join(dir, fmt.Sprintf("emb%d", run))} }},
	}
	var tarTotal int64
	for _, l := range layers {
		tarTotal += l.TarBytes
	}
	// Level 9 is what users run; level 1 shows the cost of moving blobs over
	// the socket once compression no longer hides it.
	for _, level := range []string{"9", "1"} {
		secs := make([][]float64, len(modes))
		for run := range runs {
			for i, m := range modes {
				args := m.args(run)
				if out, err := exec.Command(bin("lazyconv"), append(args, "image", "import", archive)...).CombinedOutput(); err != nil {
					return fmt.Errorf("%s import: %v: %s", m.name, err, out)
				}
				start := time.Now()
				out, err := exec.Command(bin("lazyconv"), append(args, "image", "convert", "--estargz", "--oci", "-q",
					"--estargz-compression-level", level, "bench/modes:src", "bench/modes:esgz-"+level)...).CombinedOutput()
				if err != nil {
					return fmt.Errorf("%s convert: %v: %s", m.name, err, out)
				}
				secs[i] = append(secs[i], time.Since(start).Seconds())
			}
		}
		fmt.Printf("\n%-38s %12s %22s\n", fmt.Sprintf("%d layers, %s of files, level %s", len(layers), fmtMiB(tarTotal), level),
			"throughput", "in-daemon is faster by")
		base := median(secs[0])
		for i, m := range modes {
			md := median(secs[i])
			fmt.Printf("%-38s %7.1f MiB/s %21.2fx\n", m.name, float64(tarTotal)/(1<<20)/md, md/base)
		}
	}
	return nil
}

// canRun reports whether a section running daemons can run here: as root,
// with the named binaries of binDir built; if not, it says why.
func canRun(section, binDir string, names ...string) bool {
	for _, name := range names {
		if _, err := os.Stat(filepath.Join(binDir, name)); err != nil {
			fmt.Printf("\n%s: skipped, %s not built (make bench builds it)\n", section, filepath.Join(binDir, name))
			return false
		}
	}
	if os.Geteuid() != 0 {
		fmt.Printf("\n%s: skipped, containerd needs root\n", section)
		return false
	}
	return true
}

func writeArchive(path, name string, layers []generated) error {
	img := imagegen.Image{Name: name}
	for _, l := range layers {
		img.Layers = append(img.Layers, imagegen.Layer{MediaType: ocispec.MediaTypeImageLayerGzip, DiffID: l.DiffID,
			Open: func() (io.ReadCloser, int64, error) {
				f, err := os.Open(l.Path)
				return f, l.Size, err
			}})
	}
	return imagegen.WriteOCIArchiveFile(path, img)
}

type containerdProcess struct {
	cmd     *exec.Cmd
	address string
}

// startContainerd starts bin on its own root under dir, with daemonConfig
// and extra appended to it.
func startContainerd(bin, dir string, extra ...string) (*containerdProcess, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(daemonConfig+strings.Join(extra, "\n")), 0o644); err != nil {
		return nil, err
	}
	p := &containerdProcess{address: filepath.Join(dir, "c.sock")}
	p.cmd = exec.Command(bin, "--config", cfg, "--root", filepath.Join(dir, "root"), "--state", filepath.Join(dir, "state"), "--address", p.address)
	logf, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		return nil, err
	}
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	err = waitFor(func() bool {
		c, err := containerd.New(p.address, containerd.WithTimeout(time.Second))
		if err != nil {
			return false
		}
		defer c.Close()
		_, err = c.Version(context.Background())
		return err == nil
	})
	if err != nil {
		p.stop()
		b, _ := os.ReadFile(logf.Name())
		return nil, fmt.Errorf("%s did not start: %v\n%s", bin, err, strings.TrimSpace(string(b)))
	}
	return p, nil
}

func (p *containerdProcess) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	_ = p.cmd.Wait()
}

func waitFor(ok func() bool) error {
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out")
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}
