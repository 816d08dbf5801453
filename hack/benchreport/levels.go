package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
	esgzconvert "github.com/containerd/stargz-snapshotter/nativeconverter/estargz"
	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/stargz"
)

// lookupFormat finds a format by key: one of formats, or
// "estargz@<level>@<deflate>" (an eStargz conversion at that level with that
// deflate, "" for the build's; the peer at the same level).
func lookupFormat(key string) (*format, error) {
	for i := range formats {
		if formats[i].key == key {
			return &formats[i], nil
		}
	}
	name, rest, ok := strings.Cut(key, "@")
	if !ok || name != "estargz" {
		return nil, fmt.Errorf("unknown format %q", key)
	}
	levelText, deflate, _ := strings.Cut(rest, "@")
	level, err := strconv.Atoi(levelText)
	if err != nil {
		return nil, fmt.Errorf("format %q: %w", key, err)
	}
	o := stargz.EStargzOptions{CompressionLevel: level, Deflate: deflate}
	return &format{key: key, name: fmt.Sprintf("eStargz, level %d", level),
		ours: func() (converter.LayerConverter, error) { return stargz.NewEStargz(o) },
		peer: esgzconvert.LayerConvertFunc(estargz.WithCompressionLevel(level))}, nil
}

// startProfile writes a CPU profile of the conversion to the file
// $BENCH_CPUPROFILE names, if any.
func startProfile() (func(), error) {
	path := os.Getenv("BENCH_CPUPROFILE")
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// realLayers are the gzip'd tar layers (*.tar.gz, in name order) in dir:
// a real image's, as hack/realimage.sh writes them (a debootstrapped Debian,
// python3.11 installed over it, Go's sources).
func realLayers(dir string) ([]generated, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.tar.gz"))
	if err != nil {
		return nil, err
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("no *.tar.gz layers in %s", dir)
	}
	sort.Strings(paths)
	var out []generated
	for _, p := range paths {
		g, err := describeLayer(p)
		if err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	return out, nil
}

// describeLayer reads a gzip'd tar layer for its diffID and sizes.
func describeLayer(path string) (generated, error) {
	f, err := os.Open(path)
	if err != nil {
		return generated{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return generated{}, err
	}
	zr, err := gzip.NewReader(f)
	if err != nil {
		return generated{}, fmt.Errorf("%s: %w", path, err)
	}
	dg := digest.SHA256.Digester()
	n, err := io.Copy(dg.Hash(), zr)
	if err != nil {
		return generated{}, fmt.Errorf("%s: %w", path, err)
	}
	return generated{DiffID: dg.Digest(), Path: path, Size: fi.Size(), TarBytes: n}, nil
}

// levelCandidates are the levels the levels section measures per deflate.
var levelCandidates = map[string][]int{"libdeflate": {4, 5, 6, 7, 8, 9}, "go": {6, 7, 8, 9}}

// levelsSection measures every candidate level of every deflate this build
// has against nerdctl's default (nativeconverter, level 9) on each
// workload, and names the default each deflate's rule picks: the fastest
// level no larger than nerdctl's output on every workload, else the
// fastest within 0.5 % of it. It is what stargz.DefaultLevel is chosen from.
func levelsSection(work string, loads []workload, runs int) error {
	deflates := []string{"go"}
	if stargz.DefaultDeflate() == stargz.DeflateLibdeflate {
		deflates = []string{"libdeflate", "go"}
	}
	// worst[deflate][level]: the largest size Δ over the workloads; time: the sum of medians.
	worst := map[string]map[int]float64{}
	total := map[string]map[int]float64{}
	for _, w := range loads {
		peer, err := measure(work, "peer", "estargz@9@", w, runs)
		if err != nil {
			return err
		}
		fmt.Printf("\n%s: nerdctl's default (level 9) %.1f s, %d bytes\n", w.name, peer.seconds, int64(peer.size))
		fmt.Printf("%-12s %5s %9s %8s %9s\n", "deflate", "level", "lazyconv", "ratio", "size Δ")
		for _, d := range deflates {
			if worst[d] == nil {
				worst[d], total[d] = map[int]float64{}, map[int]float64{}
			}
			for _, level := range levelCandidates[d] {
				ours, err := measure(work, "ours", fmt.Sprintf("estargz@%d@%s", level, d), w, runs)
				if err != nil {
					return err
				}
				delta := 100 * (ours.size - peer.size) / peer.size
				fmt.Printf("%-12s %5d %8.1fs %7.2fx %+8.2f%%\n", d, level, ours.seconds, peer.seconds/ours.seconds, delta)
				if v, ok := worst[d][level]; !ok || delta > v {
					worst[d][level] = delta
				}
				total[d][level] += ours.seconds
			}
		}
	}
	fmt.Println()
	for _, d := range deflates {
		fmt.Printf("%s: fastest level no larger than nerdctl's on every workload: %s; within 0.5 %%: %s; this build's default: %d\n",
			d, fastest(total[d], worst[d], 0), fastest(total[d], worst[d], 0.5), stargz.DefaultLevel(d))
	}
	return nil
}

// fastest is the level of least total time whose worst size Δ is at most
// limit percent, or "none".
func fastest(total, worst map[int]float64, limit float64) string {
	best, found := 0, false
	for level, t := range total {
		if worst[level] <= limit && (!found || t < total[best]) {
			best, found = level, true
		}
	}
	if !found {
		return "none"
	}
	return strconv.Itoa(best)
}
