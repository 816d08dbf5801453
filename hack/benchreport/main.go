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
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	ctdconverter "github.com/containerd/containerd/v2/core/images/converter"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/log"
	"github.com/containerd/platforms"
	"github.com/containerd/stargz-snapshotter/estargz"
	esgzconvert "github.com/containerd/stargz-snapshotter/nativeconverter/estargz"
	zstdchunkedconvert "github.com/containerd/stargz-snapshotter/nativeconverter/zstdchunked"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/stargz"
	"github.com/lazyconv/lazyconv/internal/imagegen"
	"github.com/lazyconv/lazyconv/localstore"
)

func main() {
	runs := flag.Int("runs", 3, "runs per measurement (the median is reported)")
	layerMiB := flag.Int("layer-mib", 200, "size of the single generated layer, in MiB of files")
	multi := flag.Int("multi-layers", 4, "layers of the multi-layer image")
	multiMiB := flag.Int("multi-layer-mib", 64, "size of each layer of the multi-layer image")
	rssMiB := flag.Int("rss-layer-mib", 1024, "layer size for the peak RSS measurement (0 skips it)")
	binDir := flag.String("bin", "bin", "directory of lazyconv, lazyconvd, containerd-lazyconv and stock/containerd")
	modeMiB := flag.Int("modes-layer-mib", 32, "layer size for the in-daemon/sidecar/embedded comparison (0 skips it)")
	hostileMiB := flag.Int("hostile-mib", 256, "payload of the decompression bombs in the hostile-input section (0 skips it)")
	hostileOnly := flag.Bool("hostile-only", false, "run only the hostile-input section")
	rssOnly := flag.Bool("rss-only", false, "run only the peak-RSS measurement of one large layer")
	memoryOnly := flag.Bool("memory-only", false, "run only the daemon memory measurement")
	flag.Parse()
	_ = log.SetLevel("error")
	switch {
	case *memoryOnly:
		only(func(work string) error {
			layers, err := generateLayers(work, "memory", *multi, int64(*multiMiB)<<20)
			if err != nil {
				return err
			}
			return daemonMemory(work, *binDir, layers)
		})
		return
	case *rssOnly:
		only(func(work string) error { return peakRSS(work, filepath.Join(*binDir, "lazyconv"), *rssMiB) })
		return
	case *hostileOnly:
		only(func(string) error { return hostileSection(filepath.Join(*binDir, "lazyconv"), int64(*hostileMiB)<<20) })
		return
	}
	if err := run(*runs, *layerMiB, *multi, *multiMiB, *rssMiB, *modeMiB, *binDir); err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
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

func run(runs, layerMiB, multi, multiMiB, rssMiB, modeMiB int, binDir string) error {
	bin := filepath.Join(binDir, "lazyconv")
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

	fmt.Printf("lazyconv bench: GOMAXPROCS=%d, %d runs each, medians; layers are tars of real files from GOROOT, gzip'd\n\n", runtime.GOMAXPROCS(0), runs)
	single, err := generateLayers(work, "single", 1, int64(layerMiB)<<20)
	if err != nil {
		return err
	}
	several, err := generateLayers(work, "multi", multi, int64(multiMiB)<<20)
	if err != nil {
		return err
	}
	for _, f := range []format{
		{"eStargz, level 9", func() (converter.LayerConverter, error) { return stargz.NewEStargz(stargz.DefaultEStargzOptions()) },
			esgzconvert.LayerConvertFunc(estargz.WithCompressionLevel(9))},
		{"zstd:chunked, level 3", func() (converter.LayerConverter, error) {
			return stargz.NewZstdChunked(stargz.DefaultZstdChunkedOptions())
		},
			zstdchunkedconvert.LayerConvertFuncWithCompressionLevel(zstd.SpeedDefault)},
	} {
		fmt.Printf("\n%-34s %12s %12s %12s %10s\n", f.name, "lazyconv", "peer", "ratio", "size Δ")
		for _, tc := range []struct {
			name   string
			layers []generated
		}{
			{fmt.Sprintf("1 layer, %d MiB of files", layerMiB), single},
			{fmt.Sprintf("%d layers x %d MiB of files", multi, multiMiB), several},
		} {
			if err := compare(ctx, st, f, tc.name, tc.layers, runs); err != nil {
				return err
			}
		}
	}
	if err := cachedReconvert(ctx, st, several, runs); err != nil {
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
		if err := daemonMemory(work, binDir, several); err != nil {
			return err
		}
	}
	if rssMiB > 0 {
		if err := peakRSS(work, bin, rssMiB); err != nil {
			return err
		}
	}
	return nil
}

type generated struct {
	diffID   digest.Digest
	path     string
	size     int64
	tarBytes int64
}

// generateLayers writes n gzip'd tar layers of at least size file bytes each.
func generateLayers(dir, name string, n int, size int64) ([]generated, error) {
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
		if err := imagegen.WriteGorootTar(cw, fmt.Sprintf("%s%d-", name, i), size); err != nil {
			return nil, err
		}
		zw.Close()
		fi, _ := f.Stat()
		f.Close()
		out = append(out, generated{diffID: dg.Digest(), path: p, size: fi.Size(), tarBytes: cw.n})
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
		img.Layers = append(img.Layers, imagegen.Layer{MediaType: ocispec.MediaTypeImageLayerGzip, DiffID: l.diffID,
			Open: func() (io.ReadCloser, int64, error) {
				f, err := os.Open(l.path)
				return f, l.size, err
			}})
	}
	_, err := imagegen.Store(ctx, st.ContentStore(), st.ImageStore(), img)
	return ctx, "bench:src", err
}

// format is a lazyconv converter and the peer converter of the same format,
// at the same level.
type format struct {
	name string
	ours func() (converter.LayerConverter, error)
	peer ctdconverter.ConvertFunc
}

func compare(ctx context.Context, st *localstore.Store, f format, name string, layers []generated, runs int) error {
	var tarTotal int64
	for _, l := range layers {
		tarTotal += l.tarBytes
	}
	var ours, peer []float64
	var oursSize, peerSize int64
	for range runs {
		// lazyconv
		nctx, ref, err := storeImage(ctx, st, layers)
		if err != nil {
			return err
		}
		conv, err := converter.New(st.ContentStore(), st.LeaseManager())
		if err != nil {
			return err
		}
		lc, err := f.ours()
		if err != nil {
			return err
		}
		start := time.Now()
		res, err := conv.ConvertImage(nctx, st.ImageStore(), ref, "bench:esgz", converter.ImageOptions{Layers: converter.Every(lc), Platforms: platforms.All})
		if err != nil {
			return err
		}
		ours = append(ours, time.Since(start).Seconds())
		oursSize = 0
		for _, l := range res.Layers {
			oursSize += l.Desc.Size
		}

		// stargz-snapshotter's nativeconverter, through containerd's converter, as nerdctl runs it.
		nctx, ref, err = storeImage(ctx, st, layers)
		if err != nil {
			return err
		}
		start = time.Now()
		img, err := ctdconverter.Convert(nctx, st.Client(), "bench:peer", ref,
			ctdconverter.WithLayerConvertFunc(f.peer))
		if err != nil {
			return err
		}
		peer = append(peer, time.Since(start).Seconds())
		peerSize, err = imageLayerBytes(nctx, st.Client(), img.Target)
		if err != nil {
			return err
		}
	}
	mo, mp := median(ours), median(peer)
	mib := float64(tarTotal) / (1 << 20)
	fmt.Printf("%-34s %8.1f MiB/s %8.1f MiB/s %9.2fx %+9.2f%%\n", name, mib/mo, mib/mp, mp/mo, 100*(float64(oursSize)-float64(peerSize))/float64(peerSize))
	return nil
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

// peakRSS converts one large layer with the lazyconv binary in embedded mode
// and reports the process's peak resident set.
func peakRSS(work, bin string, mib int) error {
	if _, err := os.Stat(bin); err != nil {
		fmt.Printf("peak RSS: skipped, %s not built (run make build)\n", bin)
		return nil
	}
	layers, err := generateLayers(work, "rss", 1, int64(mib)<<20)
	if err != nil {
		return err
	}
	archive := filepath.Join(work, "rss.tar")
	if err := writeArchive(archive, "rss:src", layers); err != nil {
		return err
	}
	root := filepath.Join(work, "rss-root")
	if out, err := exec.Command(bin, "--root", root, "image", "import", archive).CombinedOutput(); err != nil {
		return fmt.Errorf("import: %v: %s", err, out)
	}
	cmd := exec.Command(bin, "--root", root, "image", "convert", "--estargz", "--oci", "-q", "rss:src", "rss:esgz")
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("convert: %v: %s", err, out)
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	fmt.Printf("peak RSS converting a %d MiB (%s of files) layer: %.0f MB (target < 200 MB), %.1f s\n",
		mib, fmtMiB(layers[0].tarBytes), float64(ru.Maxrss)/1024, time.Since(start).Seconds())
	return nil
}

func fmtMiB(n int64) string { return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20)) }

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}
