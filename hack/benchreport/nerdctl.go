package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

// nerdctlVersion is the nerdctl the section runs, as the integration tests
// build it (its version list is not served by the proxy here, nor is it in
// the checksum database: GONOSUMDB).
const nerdctlVersion = "v2.0.5"

// nerdctlBinary finds nerdctl as the integration tests built it
// (bin/integration/buildkit), or builds it into binDir/nerdctl through the
// Go module proxy, once.
func nerdctlBinary(binDir string) (string, error) {
	for _, p := range []string{filepath.Join(binDir, "integration", "buildkit", "nerdctl"), filepath.Join(binDir, "nerdctl")} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	mod, err := os.MkdirTemp("", "lazyconv-nerdctl-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(mod)
	out, _ := filepath.Abs(binDir)
	for _, args := range [][]string{
		{"mod", "init", "lazyconv.bench/nerdctl"},
		{"get", "github.com/containerd/nerdctl/v2@" + nerdctlVersion},
		{"build", "-o", out + "/", "github.com/containerd/nerdctl/v2/cmd/nerdctl"},
	} {
		cmd := exec.Command("go", args...)
		cmd.Dir = mod
		cmd.Env = append(os.Environ(), "GOFLAGS=-buildvcs=false -mod=mod", "GONOSUMDB=github.com/containerd/nerdctl")
		if b, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("building nerdctl %s: go %v: %v\n%s", nerdctlVersion, args, err, b)
		}
	}
	return filepath.Join(out, "nerdctl"), nil
}

// nerdctlSection converts each workload with the nerdctl binary
// (`nerdctl image convert --estargz --oci`, its default level 9) and with
// lazyconv's ctr (`ctr images convert --estargz --oci`, lazyconv's default)
// in one containerd-lazyconv daemon, alternating, and prints times, ratio,
// output sizes and peak RSS (medians of runs).
func nerdctlSection(work, binDir string, loads []workload, runs int) error {
	if !canRun("nerdctl itself", binDir, "containerd-lazyconv", "ctr") {
		return nil
	}
	nerdctl, err := nerdctlBinary(binDir)
	if err != nil {
		fmt.Printf("\nnerdctl itself: skipped, %v\n", err)
		return nil
	}
	dir, err := os.MkdirTemp("/tmp", "lcn")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	d, err := startContainerd(filepath.Join(binDir, "containerd-lazyconv"), filepath.Join(dir, "d"))
	if err != nil {
		return err
	}
	defer d.stop()
	client, err := containerd.New(d.address)
	if err != nil {
		return err
	}
	defer client.Close()
	fmt.Printf("\nnerdctl %s itself against lazyconv in the same containerd-lazyconv daemon (eStargz, each's default level; medians of %d)\n", nerdctlVersion, runs)
	fmt.Printf("%-34s %10s %10s %8s %8s %10s\n", "", "lazyconv", "nerdctl", "ratio", "size Δ", "RSS nerdctl")
	for i, w := range loads {
		archive := filepath.Join(work, fmt.Sprintf("nerdctl-%d.tar", i))
		if err := writeArchive(archive, "example.com/bench/nerdctl:src", w.layers); err != nil {
			return err
		}
		var ours, theirs, rss []float64
		var ourSize, theirSize int64
		for run := range runs {
			ns := fmt.Sprintf("w%dr%d", i, run)
			ctr := func(args ...string) error {
				out, err := exec.Command(filepath.Join(binDir, "ctr"), append([]string{"--address", d.address, "-n", ns}, args...)...).CombinedOutput()
				if err != nil {
					return fmt.Errorf("ctr %v: %v: %s", args, err, out)
				}
				return nil
			}
			if err := ctr("images", "import", archive); err != nil {
				return err
			}
			start := time.Now()
			if err := ctr("images", "convert", "--estargz", "--oci", "example.com/bench/nerdctl:src", "example.com/bench/nerdctl:lazyconv"); err != nil {
				return err
			}
			ours = append(ours, time.Since(start).Seconds())
			cmd := exec.Command(nerdctl, "--address", d.address, "--namespace", ns, "image", "convert", "--estargz", "--oci",
				"example.com/bench/nerdctl:src", "example.com/bench/nerdctl:nerdctl")
			start = time.Now()
			out, peak, err := measuredRun(cmd)
			if err != nil {
				return fmt.Errorf("nerdctl image convert: %v: %s", err, out)
			}
			theirs, rss = append(theirs, time.Since(start).Seconds()), append(rss, peak)
			ctx := namespaces.WithNamespace(context.Background(), ns)
			for name, size := range map[string]*int64{"example.com/bench/nerdctl:lazyconv": &ourSize, "example.com/bench/nerdctl:nerdctl": &theirSize} {
				img, err := client.ImageService().Get(ctx, name)
				if err != nil {
					return err
				}
				if *size, err = imageLayerBytes(ctx, client, img.Target); err != nil {
					return err
				}
			}
		}
		fmt.Printf("%-34s %9.1fs %9.1fs %7.2fx %+7.2f%% %8.0f MB\n", w.name, median(ours), median(theirs),
			median(theirs)/median(ours), 100*float64(ourSize-theirSize)/float64(theirSize), median(rss))
	}
	return nil
}

// cachedReconvertCLI times a second conversion of an image with the
// embedded CLI, process start included: every layer is found converted
// (the variant labels), so it is the cost of a no-op conversion as a user
// sees it.
func cachedReconvertCLI(work, binDir string, layers []generated, runs int) error {
	bin := filepath.Join(binDir, "lazyconv")
	if _, err := os.Stat(bin); err != nil {
		fmt.Printf("\ncached re-convert, process included: skipped, %s not built\n", bin)
		return nil
	}
	archive := filepath.Join(work, "reconvert.tar")
	if err := writeArchive(archive, "example.com/bench/reconvert:src", layers); err != nil {
		return err
	}
	root := filepath.Join(work, "reconvert-root")
	cli := func(args ...string) error {
		out, err := exec.Command(bin, append([]string{"--root", root}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("lazyconv %v: %v: %s", args, err, out)
		}
		return nil
	}
	if err := cli("image", "import", archive); err != nil {
		return err
	}
	if err := cli("image", "convert", "--estargz", "--oci", "-q", "example.com/bench/reconvert:src", "example.com/bench/reconvert:esgz"); err != nil {
		return err
	}
	var times []float64
	for run := range runs {
		start := time.Now()
		if err := cli("image", "convert", "--estargz", "--oci", "-q", "example.com/bench/reconvert:src", fmt.Sprintf("example.com/bench/reconvert:again%d", run)); err != nil {
			return err
		}
		times = append(times, time.Since(start).Seconds())
	}
	fmt.Printf("cached re-convert of the %d-layer image with the embedded CLI, process included: %.0f ms (target ≤ 50 ms)\n", len(layers), 1000*median(times))
	return nil
}
