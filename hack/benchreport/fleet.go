package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// fleetSection measures a fleet of nodes sharing one registry: node A
// converts a lazily pulled multi-layer image and pushes it (publishing the
// conversion as a referrer of the source manifest); node B, from its own
// lazy pull, adopts it once it has fetched and verified its layers against
// the source (the default); node C, which lists the registry in
// trusted_publishers, adopts it unread. It prints B's and C's times as
// fractions of A's.
func fleetSection(work, binDir string, layers []generated, runs int) error {
	bin := func(name string) string { return filepath.Join(binDir, name) }
	if !canRun("fleet", binDir, "lazyconv", "containerd-lazyconv", "registry") {
		return nil
	}
	archive := filepath.Join(work, "fleet.tar")
	if err := writeArchive(archive, "bench/fleet:src", layers); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("/tmp", "lcf")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	host, stopRegistry, err := startRegistry(bin("registry"), filepath.Join(dir, "registry"))
	if err != nil {
		return err
	}
	defer stopRegistry()
	nodeA, err := startContainerd(bin("containerd-lazyconv"), filepath.Join(dir, "a"))
	if err != nil {
		return err
	}
	defer nodeA.stop()
	nodeB, err := startContainerd(bin("containerd-lazyconv"), filepath.Join(dir, "b"))
	if err != nil {
		return err
	}
	defer nodeB.stop()
	nodeC, err := startContainerd(bin("containerd-lazyconv"), filepath.Join(dir, "c"),
		fmt.Sprintf("[plugins.'io.containerd.grpc.v1.lazyconv']\n  trusted_publishers = [%q]\n", host+"/bench/**"))
	if err != nil {
		return err
	}
	defer nodeC.stop()
	cli := func(node *containerdProcess, ns string, args ...string) (string, error) {
		out, err := exec.Command(bin("lazyconv"), append([]string{"--address", node.address, "-n", ns}, args...)...).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("lazyconv %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return string(out), nil
	}
	if _, err := cli(nodeA, "import", "image", "import", archive); err != nil {
		return err
	}
	var secsA, secsB, secsC []float64
	for run := range runs {
		// A repository per run: nothing published by an earlier run is found.
		src := fmt.Sprintf("%s/bench/fleet%d:src", host, run)
		ns := fmt.Sprintf("r%d", run)
		steps := []struct {
			node *containerdProcess
			ns   string
			args []string
			secs *[]float64
		}{
			{nodeA, "import", []string{"image", "push", src, "bench/fleet:src"}, nil},
			{nodeA, ns, []string{"image", "pull", "--lazy", src}, nil},
			{nodeA, ns, []string{"image", "convert", "--estargz", "--oci", src, src + "-esgz"}, &secsA},
			{nodeA, ns, []string{"image", "push", src + "-esgz"}, nil},
			{nodeB, ns, []string{"image", "pull", "--lazy", src}, nil},
			{nodeB, ns, []string{"image", "convert", "--estargz", "--oci", src, src + "-esgz"}, &secsB},
			{nodeC, ns, []string{"image", "pull", "--lazy", src}, nil},
			{nodeC, ns, []string{"image", "convert", "--estargz", "--oci", src, src + "-esgz"}, &secsC},
		}
		for _, s := range steps {
			start := time.Now()
			out, err := cli(s.node, s.ns, s.args...)
			if err != nil {
				return err
			}
			if s.secs != nil {
				*s.secs = append(*s.secs, time.Since(start).Seconds())
			}
			if s.secs == &secsB && (!strings.Contains(out, "adopted from") || !strings.Contains(out, "verified")) {
				return fmt.Errorf("node B did not verify and adopt node A's conversion:\n%s", out)
			}
			if s.secs == &secsC && (!strings.Contains(out, "adopted from") || !strings.Contains(out, "trusted, unread")) {
				return fmt.Errorf("node C did not adopt node A's conversion unread:\n%s", out)
			}
		}
	}
	var tarTotal int64
	for _, l := range layers {
		tarTotal += l.TarBytes
	}
	a, b, c := median(secsA), median(secsB), median(secsC)
	fmt.Printf("\nfleet: one registry, three nodes, %d layers, %s of files, eStargz level 9, from lazy pulls (CLI process included)\n", len(layers), fmtMiB(tarTotal))
	fmt.Printf("%-44s %9.2fs\n", "node A converts (fetching its layers)", a)
	fmt.Printf("%-44s %9.2fs\n", "node B fetches, verifies, adopts", b)
	fmt.Printf("%-44s %9.2fs\n", "node C adopts unread (trusted publisher)", c)
	fmt.Printf("%-44s %9.1f %%  (target <= 25 %%)\n", "node B (verified) as a fraction of node A", 100*b/a)
	fmt.Printf("%-44s %9.1f %%  (target < 5 %%)\n", "node C (trusted) as a fraction of node A", 100*c/a)
	return nil
}

// startRegistry runs distribution's registry on a free port of 127.0.0.1,
// with extra appended to its configuration.
func startRegistry(bin, dir string, extra ...string) (string, func(), error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	host := l.Addr().String()
	l.Close()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", nil, err
	}
	cfg := filepath.Join(dir, "config.yml")
	text := fmt.Sprintf("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n", filepath.Join(dir, "data"), host) + strings.Join(extra, "")
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		return "", nil, err
	}
	cmd := exec.Command(bin, "serve", cfg)
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop := func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	err = waitFor(func() bool {
		resp, err := http.Get("http://" + host + "/v2/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if err != nil {
		stop()
		return "", nil, fmt.Errorf("registry: %w", err)
	}
	return host, stop, nil
}
