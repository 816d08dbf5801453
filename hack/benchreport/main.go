// Command benchreport measures lazyconv against its peers side by side, in one
// run, on generated layers of real files, and prints ratios (medians of
// -runs runs). It is what `make bench` runs after the Go benchmarks.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/log"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/stargz"
	"github.com/lazyconv/lazyconv/internal/imagegen"
	"github.com/lazyconv/lazyconv/localstore"
)

func main() {
	runs := flag.Int("runs", 3, "runs per measurement (the median is reported)")
	multi := flag.Int("multi-layers", 4, "layers of the multi-layer image of real files")
	multiMiB := flag.Int("multi-layer-mib", 64, "size of each layer of the multi-layer image")
	files := flag.Int("small-files", 300000, "files of the small-files layer (0 skips it)")
	bigMiB := flag.Int("big-layer-mib", 1024, "size of the single large layer (0 skips it)")
	binDir := flag.String("bin", "bin", "directory of lazyconv, lazyconvd, containerd-lazyconv and stock/containerd")
	modeMiB := flag.Int("modes-layer-mib", 32, "layer size for the in-daemon/sidecar/embedded comparison (0 skips it)")
	hostileMiB := flag.Int("hostile-mib", 256, "payload of the decompression bombs in the hostile-input section (0 skips it)")
	hostileOnly := flag.Bool("hostile-only", false, "run only the hostile-input section")
	memoryOnly := flag.Bool("memory-only", false, "run only the daemon memory measurement")
	compareOnly := flag.Bool("compare-only", false, "run only the side-by-side comparison with nativeconverter")
	fleetOnly := flag.Bool("fleet-only", false, "run only the two-node fleet measurement")
	rulesOnly := flag.Bool("rules-only", false, "run only the rules-under-load measurement")
	rulesImages := flag.Int("rules-images", 1000, "images of each storm of the rules-under-load section (0 skips it)")
	realDir := flag.String("real", "", "directory of a real image's gzip'd tar layers (*.tar.gz, as hack/realimage.sh writes): workload (r)")
	probe := flag.Bool("probe-compressors", false, "print the compress-only limit of every deflate and level 5-9 on workload (r) or (a), and exit")
	levelsOnly := flag.Bool("levels-only", false, "run only the default-level measurement (every candidate level against nerdctl's default)")
	sociOnly := flag.Bool("soci-only", false, "run only the SOCI section (lazyconv against soci-snapshotter's builder)")
	nerdctlOnly := flag.Bool("nerdctl-only", false, "run only the section converting with the nerdctl binary")
	childSide := flag.String("child", "", "internal: convert once as lazyconv (ours) or nativeconverter (peer)")
	childFormat := flag.String("child-format", "", "internal: the child's format")
	childLayers := flag.String("child-layers", "", "internal: the child's layers (JSON)")
	flag.Parse()
	_ = log.SetLevel("error")
	switch {
	case *childSide != "":
		if err := child(*childSide, *childFormat, *childLayers); err != nil {
			fmt.Fprintln(os.Stderr, "benchreport child:", err)
			os.Exit(1)
		}
		return
	case *probe:
		only(func(work string) error {
			loads, err := workloads(work, *realDir, *multi, *multiMiB, 0, 0)
			if err != nil {
				return err
			}
			return probeCompressors(loads[0].layers)
		})
		return
	case *levelsOnly:
		only(func(work string) error {
			loads, err := workloads(work, *realDir, *multi, *multiMiB, *files, 0)
			if err != nil {
				return err
			}
			return levelsSection(work, loads, *runs)
		})
		return
	case *sociOnly:
		only(func(work string) error {
			loads, err := workloads(work, *realDir, *multi, *multiMiB, 0, 0)
			if err != nil {
				return err
			}
			return sociSection(work, loads, *runs)
		})
		return
	case *nerdctlOnly:
		only(func(work string) error {
			loads, err := workloads(work, *realDir, *multi, *multiMiB, 0, 0)
			if err != nil {
				return err
			}
			if err := cachedReconvertCLI(work, *binDir, loads[0].layers, *runs); err != nil {
				return err
			}
			return nerdctlSection(work, *binDir, loads, *runs)
		})
		return
	case *compareOnly:
		only(func(work string) error {
			loads, err := workloads(work, *realDir, *multi, *multiMiB, *files, *bigMiB)
			if err != nil {
				return err
			}
			return compareWorkloads(work, loads, *runs)
		})
		return
	case *memoryOnly:
		only(func(work string) error {
			layers, err := generateLayers(work, "memory", *multi, int64(*multiMiB)<<20)
			if err != nil {
				return err
			}
			return daemonMemory(work, *binDir, layers)
		})
		return
	case *fleetOnly:
		only(func(work string) error {
			layers, err := generateLayers(work, "fleet", *multi, int64(*multiMiB)<<20)
			if err != nil {
				return err
			}
			return fleetSection(work, *binDir, layers, *runs)
		})
		return
	case *rulesOnly:
		only(func(work string) error { return rulesSection(work, *binDir, *rulesImages) })
		return
	case *hostileOnly:
		only(func(string) error { return hostileSection(filepath.Join(*binDir, "lazyconv"), int64(*hostileMiB)<<20) })
		return
	}
	if err := run(*runs, *realDir, *multi, *multiMiB, *files, *bigMiB, *modeMiB, *binDir); err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
	only(func(work string) error { return rulesSection(work, *binDir, *rulesImages) })
	if *hostileMiB > 0 {
		if err := hostileSection(filepath.Join(*binDir, "lazyconv"), int64(*hostileMiB)<<20); err != nil {
			fmt.Fprintln(os.Stderr, "benchreport:", err)
			os.Exit(1)
		}
	}
}

// only runs one section in a temporary work directory, and exits on error.
func only(section func(work string) error) {
	work, err := os.MkdirTemp("", "lazyconv-bench-")
	if err == nil {
		defer os.RemoveAll(work)
		err = section(work)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
}

func run(runs int, realDir string, multi, multiMiB, files, bigMiB, modeMiB int, binDir string) error {
	work, err := os.MkdirTemp("", "lazyconv-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	ctx := context.Background()
	st, err := localstore.Open(ctx, filepath.Join(work, "store"))
	if err != nil {
		return err
	}
	defer st.Close()

	fmt.Printf("lazyconv bench: GOMAXPROCS=%d, %d runs each, medians; peer is stargz-snapshotter's nativeconverter (what nerdctl runs)\n", runtime.GOMAXPROCS(0), runs)
	loads, err := workloads(work, realDir, multi, multiMiB, files, bigMiB)
	if err != nil {
		return err
	}
	if err := compareWorkloads(work, loads, runs); err != nil {
		return err
	}
	if err := cachedReconvert(ctx, st, loads[0].layers, runs); err != nil {
		return err
	}
	if err := cachedReconvertCLI(work, binDir, loads[0].layers, runs); err != nil {
		return err
	}
	var multiLayer []workload // the multi-layer images: (r) and (a)
	for _, w := range loads {
		if len(w.layers) > 1 {
			multiLayer = append(multiLayer, w)
		}
	}
	if err := nerdctlSection(work, binDir, multiLayer, runs); err != nil {
		return err
	}
	if err := sociSection(work, multiLayer, runs); err != nil {
		return err
	}
	if modeMiB > 0 {
		modeLayers, err := generateLayers(work, "modes", multi, int64(modeMiB)<<20)
		if err != nil {
			return err
		}
		if err := compareModes(work, binDir, modeLayers, runs); err != nil {
			return err
		}
		if err := daemonMemory(work, binDir, loads[0].layers); err != nil {
			return err
		}
		if err := fleetSection(work, binDir, loads[0].layers, runs); err != nil {
			return err
		}
	}
	return nil
}

// workloads are (r) a real image's layers, when realDir names them, (a) a
// multi-layer image of real files, (b) one layer of many small files, (c)
// one large layer of real files; (a), (b) and (c) are skipped when their
// size is 0.
func workloads(work, realDir string, multi, multiMiB, files, bigMiB int) ([]workload, error) {
	var loads []workload
	if realDir != "" {
		real, err := realLayers(realDir)
		if err != nil {
			return nil, err
		}
		loads = append(loads, workload{fmt.Sprintf("(r) real image, %d layers", len(real)), real})
	}
	if multi > 0 {
		several, err := generateLayers(work, "multi", multi, int64(multiMiB)<<20)
		if err != nil {
			return nil, err
		}
		loads = append(loads, workload{fmt.Sprintf("(a) %d layers x %d MiB files", multi, multiMiB), several})
	}
	if files > 0 {
		small, err := generateSmallFiles(work, files)
		if err != nil {
			return nil, err
		}
		loads = append(loads, workload{fmt.Sprintf("(b) 1 layer, %d files", files), small})
	}
	if bigMiB > 0 {
		big, err := generateLayers(work, "big", 1, int64(bigMiB)<<20)
		if err != nil {
			return nil, err
		}
		loads = append(loads, workload{fmt.Sprintf("(c) 1 layer, %d MiB files", bigMiB), big})
	}
	return loads, nil
}

type generated struct {
	DiffID   digest.Digest `json:"diffID"`
	Path     string        `json:"path"`
	Size     int64         `json:"size"`
	TarBytes int64         `json:"tarBytes"`
}

// generateLayers writes n gzip'd tar layers of at least size bytes of
// GOROOT files each.
func generateLayers(dir, name string, n int, size int64) ([]generated, error) {
	return generate(dir, name, n, func(w io.Writer, prefix string) error {
		return imagegen.WriteGorootTar(w, prefix, size)
	})
}

// generate writes n gzip'd tar layers with write, each with its own prefix
// (so that layers differ).
func generate(dir, name string, n int, write func(w io.Writer, prefix string) error) ([]generated, error) {
	var out []generated
	for i := range n {
		p := filepath.Join(dir, fmt.Sprintf("%s-%d.tar.gz", name, i))
		f, err := os.Create(p)
		if err != nil {
			return nil, err
		}
		zw, _ := imagegen.Compressor(f, "gzip")
		dg := digest.SHA256.Digester()
		cw := &countWriter{w: io.MultiWriter(zw, dg.Hash())}
		// Offset each layer's files so that layers differ.
		if err := write(cw, fmt.Sprintf("%s%d-", name, i)); err != nil {
			return nil, err
		}
		zw.Close()
		fi, _ := f.Stat()
		f.Close()
		out = append(out, generated{DiffID: dg.Digest(), Path: p, Size: fi.Size(), TarBytes: cw.n})
	}
	return out, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

var nsCounter int

// storeImage puts the layers as an image into a fresh namespace, so that no
// label cache from an earlier run helps.
func storeImage(ctx context.Context, st *localstore.Store, layers []generated) (context.Context, string, error) {
	nsCounter++
	ctx = namespaces.WithNamespace(ctx, "bench"+strconv.Itoa(nsCounter))
	img := imagegen.Image{Name: "bench:src"}
	for _, l := range layers {
		l := l
		img.Layers = append(img.Layers, imagegen.Layer{MediaType: ocispec.MediaTypeImageLayerGzip, DiffID: l.DiffID,
			Open: func() (io.ReadCloser, int64, error) {
				f, err := os.Open(l.Path)
				return f, l.Size, err
			}})
	}
	_, err := imagegen.Store(ctx, st.ContentStore(), st.ImageStore(), img)
	return ctx, "bench:src", err
}

func imageLayerBytes(ctx context.Context, c *containerd.Client, target ocispec.Descriptor) (int64, error) {
	manifest, err := images.Manifest(ctx, c.ContentStore(), target, platforms.All)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, l := range manifest.Layers {
		n += l.Size
	}
	return n, nil
}

func cachedReconvert(ctx context.Context, st *localstore.Store, layers []generated, runs int) error {
	nctx, ref, err := storeImage(ctx, st, layers)
	if err != nil {
		return err
	}
	conv, err := converter.New(st.ContentStore(), st.LeaseManager())
	if err != nil {
		return err
	}
	lc, _ := stargz.NewEStargz(stargz.DefaultEStargzOptions())
	if _, err := conv.ConvertImage(nctx, st.ImageStore(), ref, "bench:esgz", converter.ImageOptions{Layers: converter.Every(lc)}); err != nil {
		return err
	}
	var times []float64
	for range runs {
		fresh, err := converter.New(st.ContentStore(), st.LeaseManager())
		if err != nil {
			return err
		}
		start := time.Now()
		if _, err := fresh.ConvertImage(nctx, st.ImageStore(), ref, "bench:esgz2", converter.ImageOptions{Layers: converter.Every(lc)}); err != nil {
			return err
		}
		times = append(times, time.Since(start).Seconds())
		if fresh.Conversions() != 0 {
			return fmt.Errorf("cached re-convert converted %d layers", fresh.Conversions())
		}
	}
	fmt.Printf("\ncached re-convert of the %d-layer image: %.1f ms (target < 300 ms)\n", len(layers), 1000*median(times))
	return nil
}

func fmtMiB(n int64) string { return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20)) }

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}
