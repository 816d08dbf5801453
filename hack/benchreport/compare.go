package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	ctdconverter "github.com/containerd/containerd/v2/core/images/converter"
	"github.com/containerd/platforms"
	"github.com/containerd/stargz-snapshotter/estargz"
	esgzconvert "github.com/containerd/stargz-snapshotter/nativeconverter/estargz"
	zstdchunkedconvert "github.com/containerd/stargz-snapshotter/nativeconverter/zstdchunked"
	"github.com/klauspost/compress/zstd"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/stargz"
	"github.com/lazyconv/lazyconv/internal/imagegen"
	"github.com/lazyconv/lazyconv/localstore"
)

// format is a lazyconv converter and the peer converter of the same format
// at nerdctl's default level, and the deflate and level of the
// compress-only limit ("" when there is none).
type format struct {
	key, name string
	ours      func() (converter.LayerConverter, error)
	peer      ctdconverter.ConvertFunc
	deflate   string
	level     int
}

var defaultEStargz = stargz.DefaultEStargzOptions()

var formats = []format{
	{"estargz", fmt.Sprintf("eStargz, default (%s %d)", defaultEStargz.Deflate, defaultEStargz.CompressionLevel),
		func() (converter.LayerConverter, error) { return stargz.NewEStargz(stargz.DefaultEStargzOptions()) },
		esgzconvert.LayerConvertFunc(estargz.WithCompressionLevel(9)), defaultEStargz.Deflate, defaultEStargz.CompressionLevel},
	{"estargz9", fmt.Sprintf("eStargz, level 9 (%s)", defaultEStargz.Deflate),
		func() (converter.LayerConverter, error) {
			return stargz.NewEStargz(stargz.EStargzOptions{CompressionLevel: 9, Deflate: defaultEStargz.Deflate})
		},
		esgzconvert.LayerConvertFunc(estargz.WithCompressionLevel(9)), defaultEStargz.Deflate, 9},
	{"zstdchunked", "zstd:chunked, level 3",
		func() (converter.LayerConverter, error) {
			return stargz.NewZstdChunked(stargz.DefaultZstdChunkedOptions())
		},
		zstdchunkedconvert.LayerConvertFuncWithCompressionLevel(zstd.SpeedDefault), "", 0},
}

// workload is an image to convert: its gzip'd layers.
type workload struct {
	name   string
	layers []generated
}

// childResult is what one conversion in a child process reports: its
// time, output size and peak RSS (the child's own VmHWM: the rusage of a
// child Go starts counts the parent's peak, since Go forks with vfork).
type childResult struct {
	Seconds float64 `json:"seconds"`
	Size    int64   `json:"size"`
	PeakMB  float64 `json:"peakMB"`
}

// measured is the medians of one side of a comparison.
type measured struct{ seconds, size, rssMB float64 }

// compareWorkloads converts every workload to every format with lazyconv
// and with stargz-snapshotter's nativeconverter (what nerdctl runs), each
// conversion in its own process so that its peak RSS is its own, and prints
// throughput, ratio, size difference and peak RSS, medians of runs.
//
// The peer's time is measured once per workload and level (formats at the
// same peer level share it). Beside each gzip conversion is the
// compress-only limit: the same deflate at the same level over the same raw
// tars in 4 MiB pieces on every core, nothing else; "× limit" is
// lazyconv's time as a multiple of it.
func compareWorkloads(work string, loads []workload, runs int) error {
	peers := map[string]measured{}
	for _, f := range formats {
		fmt.Printf("\n%-34s %11s %11s %8s %8s %9s %9s %8s\n", f.name, "lazyconv", "nerdctl", "ratio", "size Δ", "RSS ours", "RSS peer", "× limit")
		for _, w := range loads {
			ours, err := measure(work, "ours", f.key, w, runs)
			if err != nil {
				return err
			}
			peerKey := w.name + "/" + f.key
			if f.deflate != "" {
				peerKey = w.name + "/estargz" // every eStargz row's peer is nerdctl's level 9
			}
			peer, ok := peers[peerKey]
			if !ok {
				if peer, err = measure(work, "peer", f.key, w, runs); err != nil {
					return err
				}
				peers[peerKey] = peer
			}
			limit := "-"
			if f.deflate != "" {
				tars, err := rawTars(w.layers)
				if err != nil {
					return err
				}
				var times []float64
				for range runs {
					t, _, err := compressOnly(tars, f.deflate, f.level)
					if err != nil {
						return err
					}
					times = append(times, t.Seconds())
				}
				limit = fmt.Sprintf("%.2fx", ours.seconds/median(times))
			}
			mib := float64(w.tarBytes()) / (1 << 20)
			fmt.Printf("%-34s %6.1f MiB/s %6.1f MiB/s %7.2fx %+7.2f%% %6.0f MB %6.0f MB %8s\n", w.name,
				mib/ours.seconds, mib/peer.seconds, peer.seconds/ours.seconds,
				100*(ours.size-peer.size)/peer.size, ours.rssMB, peer.rssMB, limit)
		}
	}
	return nil
}

func (w workload) tarBytes() (n int64) {
	for _, l := range w.layers {
		n += l.TarBytes
	}
	return n
}

// measure runs side's conversion of w to format in runs child processes.
func measure(work, side, format string, w workload, runs int) (measured, error) {
	spec := filepath.Join(work, "layers.json")
	b, _ := json.Marshal(w.layers)
	if err := os.WriteFile(spec, b, 0o644); err != nil {
		return measured{}, err
	}
	var secs, sizes, rss []float64
	for range runs {
		cmd := exec.Command(os.Args[0], "-child", side, "-child-format", format, "-child-layers", spec)
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			return measured{}, fmt.Errorf("%s %s of %s: %w", side, format, w.name, err)
		}
		var r childResult
		if err := json.Unmarshal(out, &r); err != nil {
			return measured{}, fmt.Errorf("%s %s of %s: %q: %w", side, format, w.name, out, err)
		}
		secs = append(secs, r.Seconds)
		sizes = append(sizes, float64(r.Size))
		rss = append(rss, r.PeakMB)
	}
	return measured{median(secs), median(sizes), median(rss)}, nil
}

// child converts the layers once, on a fresh store, and prints a childResult.
func child(side, formatKey, spec string) error {
	var layers []generated
	b, err := os.ReadFile(spec)
	if err == nil {
		err = json.Unmarshal(b, &layers)
	}
	if err != nil {
		return err
	}
	if formatKey == "soci" {
		return sociChild(side, spec, layers)
	}
	f, err := lookupFormat(formatKey)
	if err != nil {
		return err
	}
	ctx, st, ref, dir, cleanup, err := childStore(spec, layers)
	if err != nil {
		return err
	}
	defer cleanup()
	var r childResult
	stopProfile, err := startProfile()
	if err != nil {
		return err
	}
	start := time.Now()
	if side == "ours" {
		conv, err := converter.New(st.ContentStore(), st.LeaseManager())
		if err != nil {
			return err
		}
		lc, err := f.ours()
		if err != nil {
			return err
		}
		res, err := conv.ConvertImage(converter.WithScratchDir(ctx, dir), st.ImageStore(), ref, "bench:dst",
			converter.ImageOptions{Layers: converter.Every(lc), Platforms: platforms.All})
		if err != nil {
			return err
		}
		r.Seconds = time.Since(start).Seconds()
		for _, l := range res.Layers {
			r.Size += l.Desc.Size
		}
	} else {
		img, err := ctdconverter.Convert(ctx, st.Client(), "bench:dst", ref, ctdconverter.WithLayerConvertFunc(f.peer))
		if err != nil {
			return err
		}
		r.Seconds = time.Since(start).Seconds()
		if r.Size, err = imageLayerBytes(ctx, st.Client(), img.Target); err != nil {
			return err
		}
	}
	stopProfile()
	r.PeakMB = selfPeakMB()
	return json.NewEncoder(os.Stdout).Encode(r)
}

// selfPeakMB is this process's peak resident set (VmHWM), in MB.
func selfPeakMB() float64 { return procStatusKB("self", "VmHWM") / 1000 }

// measuredRun runs cmd through GNU time when it is installed, and returns
// cmd's combined output and peak RSS in MB (0 when unknown): the rusage Go
// gets for a child counts the parent's own peak (Go forks with vfork),
// GNU time's does not.
func measuredRun(cmd *exec.Cmd) ([]byte, float64, error) {
	timeBin, err := exec.LookPath("/usr/bin/time")
	if err != nil {
		out, err := cmd.CombinedOutput()
		return out, 0, err
	}
	f, err := os.CreateTemp("", "lazyconv-rss-")
	if err != nil {
		return nil, 0, err
	}
	f.Close()
	defer os.Remove(f.Name())
	cmd.Args = append([]string{timeBin, "-q", "-f", "%M", "-o", f.Name()}, cmd.Args...)
	cmd.Path = timeBin
	out, runErr := cmd.CombinedOutput()
	b, _ := os.ReadFile(f.Name())
	fields := strings.Fields(string(b))
	var kb float64
	if len(fields) > 0 {
		kb, _ = strconv.ParseFloat(fields[len(fields)-1], 64)
	}
	return out, kb / 1000, runErr
}

// generateSmallFiles writes one gzip'd layer of n small files.
func generateSmallFiles(dir string, n int) ([]generated, error) {
	return generate(dir, "files", 1, func(w io.Writer, prefix string) error {
		return imagegen.WriteSmallFilesTar(w, strings.TrimSuffix(prefix, "-"), n)
	})
}

// childStore opens a fresh store in a directory of its own beside spec,
// with the layers stored as the image it returns the name of; cleanup
// closes and removes it.
func childStore(spec string, layers []generated) (context.Context, *localstore.Store, string, string, func(), error) {
	dir, err := os.MkdirTemp(filepath.Dir(spec), "child-")
	if err != nil {
		return nil, nil, "", "", nil, err
	}
	ctx := context.Background()
	st, err := localstore.Open(ctx, filepath.Join(dir, "store"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, "", "", nil, err
	}
	cleanup := func() { st.Close(); os.RemoveAll(dir) }
	ctx, ref, err := storeImage(ctx, st, layers)
	if err != nil {
		cleanup()
		return nil, nil, "", "", nil, err
	}
	return ctx, st, ref, dir, cleanup, nil
}
