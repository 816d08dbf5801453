package main

import (
	"bytes"
	stdgzip "compress/gzip"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/klauspost/compress/gzip"

	"github.com/lazyconv/lazyconv/internal/libdeflate"
)

// limitChunk is how much of the raw tar each compression in the
// compress-only limit takes: estargz's chunk size.
const limitChunk = 4 << 20

// rawTars decompresses the layers into memory (outside any timing): what the
// compress-only limit compresses.
func rawTars(layers []generated) ([][]byte, error) {
	var out [][]byte
	for _, l := range layers {
		f, err := os.Open(l.Path)
		if err != nil {
			return nil, err
		}
		zr, err := gzip.NewReader(f)
		if err != nil {
			f.Close()
			return nil, err
		}
		b, err := io.ReadAll(zr)
		f.Close()
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

// compressOnly is the compress-only limit: the raw tars cut into
// limitChunk pieces, each compressed as one gzip member by deflate
// ("libdeflate", "go" for klauspost/compress, "stdlib" for Go's
// compress/gzip, nerdctl's) at level, on every core, nothing else. It
// returns the wall time and the compressed bytes.
func compressOnly(tars [][]byte, deflate string, level int) (time.Duration, int64, error) {
	var chunks [][]byte
	for _, t := range tars {
		for len(t) > 0 {
			n := min(len(t), limitChunk)
			chunks = append(chunks, t[:n])
			t = t[n:]
		}
	}
	if deflate == "libdeflate" && !libdeflate.Available {
		return 0, 0, fmt.Errorf("this build has no libdeflate")
	}
	var (
		next  = make(chan []byte)
		total int64
		mu    sync.Mutex
		wg    sync.WaitGroup
	)
	start := time.Now()
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf bytes.Buffer
			var ld *libdeflate.Compressor
			if deflate == "libdeflate" {
				ld, _ = libdeflate.New(level)
			}
			for c := range next {
				buf.Reset()
				switch deflate {
				case "libdeflate":
					buf.Write(ld.AppendGzip(nil, c))
				case "stdlib":
					zw, _ := stdgzip.NewWriterLevel(&buf, level)
					zw.Write(c)
					zw.Close()
				default:
					zw, _ := gzip.NewWriterLevel(&buf, level)
					zw.Write(c)
					zw.Close()
				}
				mu.Lock()
				total += int64(buf.Len())
				mu.Unlock()
			}
		}()
	}
	for _, c := range chunks {
		next <- c
	}
	close(next)
	wg.Wait()
	return time.Since(start), total, nil
}

// probeCompressors prints the compress-only limit of each deflate and level
// on the layers: what a default level is chosen from.
func probeCompressors(layers []generated) error {
	tars, err := rawTars(layers)
	if err != nil {
		return err
	}
	var raw int64
	for _, t := range tars {
		raw += int64(len(t))
	}
	fmt.Printf("compress-only limit, %d MiB of tar in %d MiB pieces on %d cores\n", raw>>20, limitChunk>>20, runtime.GOMAXPROCS(0))
	fmt.Printf("%-12s %5s %9s %12s\n", "deflate", "level", "time", "bytes")
	deflates := []string{"stdlib", "go"}
	if libdeflate.Available {
		deflates = append(deflates, "libdeflate")
	}
	for _, d := range deflates {
		for level := probeFrom(d); level <= 9; level++ {
			t, n, err := compressOnly(tars, d, level)
			if err != nil {
				return err
			}
			fmt.Printf("%-12s %5d %8.2fs %12d\n", d, level, t.Seconds(), n)
		}
	}
	return nil
}

// probeFrom is the lowest level probed: libdeflate's fast levels can still
// be smaller than Go's best.
func probeFrom(deflate string) int {
	if deflate == "libdeflate" {
		return 1
	}
	return 5
}
