//go:build libdeflate

// Command deflatebench compares klauspost's gzip with libdeflate (through
// internal/libdeflate, Debian's libdeflate-dev) as eStargz uses a compressor: every 4 MiB chunk of
// a tar of real GOROOT files is its own gzip member. On one core, it prints
// each compressor's throughput (median of 3), total output, and whether its
// output is deterministic (the same bytes twice) and valid gzip (read back by
// Go's reader). It is an evaluation for the compression issue, built only
// with the libdeflate tag:
//
//	apt-get install libdeflate-dev
//	GOMAXPROCS=1 go run -tags libdeflate ./hack/deflatebench
package main

import (
	"bytes"
	stdgzip "compress/gzip"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"time"

	kgzip "github.com/klauspost/compress/gzip"

	"github.com/lazyconv/lazyconv/internal/imagegen"
	"github.com/lazyconv/lazyconv/internal/libdeflate"
)

func main() {
	mib := flag.Int64("mib", 200, "MiB of GOROOT files in the tar")
	flag.Parse()
	var tarball bytes.Buffer
	if err := imagegen.WriteGorootTar(&tarball, "bench-", *mib<<20); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	data := tarball.Bytes()
	var chunks [][]byte
	for off := 0; off < len(data); off += 4 << 20 {
		chunks = append(chunks, data[off:min(off+4<<20, len(data))])
	}
	fmt.Printf("%d MiB of GOROOT files, %d chunks of up to 4 MiB, each its own gzip member\n", len(data)>>20, len(chunks))
	fmt.Printf("%-20s %8s %11s %7s  %s\n", "compressor", "MiB/s", "output MiB", "ratio", "deterministic and valid")
	for _, level := range []int{1, 6, 9} {
		measure(fmt.Sprintf("klauspost -%d", level), chunks, len(data), func(c []byte) []byte {
			var b bytes.Buffer
			w, _ := kgzip.NewWriterLevel(&b, level)
			_, _ = w.Write(c)
			_ = w.Close()
			return b.Bytes()
		})
	}
	for _, level := range []int{1, 6, 9, 12} {
		comp, err := libdeflate.New(level)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		measure(fmt.Sprintf("libdeflate -%d", level), chunks, len(data), func(c []byte) []byte {
			return comp.AppendGzip(nil, c)
		})
	}
}

func measure(name string, chunks [][]byte, total int, compress func([]byte) []byte) {
	var times []float64
	var out [][]byte
	for range 3 {
		out = out[:0]
		start := time.Now()
		for _, c := range chunks {
			out = append(out, compress(c))
		}
		times = append(times, time.Since(start).Seconds())
	}
	sort.Float64s(times)
	size, ok := 0, true
	for i, o := range out {
		size += len(o)
		ok = ok && bytes.Equal(o, compress(chunks[i]))
		zr, err := stdgzip.NewReader(bytes.NewReader(o))
		if err != nil {
			ok = false
			continue
		}
		back, err := io.ReadAll(zr)
		ok = ok && err == nil && bytes.Equal(back, chunks[i])
	}
	fmt.Printf("%-20s %8.1f %11.1f %7.4f  %v\n", name, float64(total)/(1<<20)/times[1], float64(size)/(1<<20), float64(size)/float64(total), ok)
}
