package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// daemonMemory converts an image in containerd-lazyconv and samples the
// daemon's resident set: idle before, peak during, and every 5 s for 30 s
// after (target: back within 20 MB of idle within 30 s).
func daemonMemory(work, binDir string, layers []generated) error {
	bin := filepath.Join(binDir, "containerd-lazyconv")
	if !canRun("daemon memory", binDir, "containerd-lazyconv") {
		return nil
	}
	dir := filepath.Join(work, "memory")
	d, err := startContainerd(bin, dir)
	if err != nil {
		return err
	}
	defer d.stop()
	archive := filepath.Join(work, "memory.tar")
	if err := writeArchive(archive, "memory:src", layers); err != nil {
		return err
	}
	cli := filepath.Join(binDir, "lazyconv")
	if out, err := exec.Command(cli, "--address", d.address, "image", "import", archive).CombinedOutput(); err != nil {
		return fmt.Errorf("import: %v: %s", err, out)
	}
	time.Sleep(2 * time.Second)
	idle := rssMB(d.cmd.Process.Pid)
	peak := peakRSS(d.cmd.Process.Pid)
	out, err := exec.Command(cli, "--address", d.address, "image", "convert", "--estargz", "--oci", "-q", "memory:src", "memory:esgz").CombinedOutput()
	peakMB := peak()
	if err != nil {
		return fmt.Errorf("convert: %v: %s", err, out)
	}
	var after []string
	for i := 1; i <= 6; i++ {
		time.Sleep(5 * time.Second)
		after = append(after, fmt.Sprintf("%ds %.0f", i*5, rssMB(d.cmd.Process.Pid)))
	}
	fmt.Printf("\ndaemon memory (containerd-lazyconv RSS, MB): idle %.0f, peak %d converting %d layers; after: %s (target: within 20 MB of idle by 30s)\n",
		idle, peakMB, len(layers), strings.Join(after, ", "))
	return nil
}

// peakRSS samples a process's resident set every 100 ms until the returned
// function is called, which returns the peak (MB).
func peakRSS(pid int) func() int64 {
	var peak atomic.Int64
	stop := every(100*time.Millisecond, func() {
		if r := int64(rssMB(pid)); r > peak.Load() {
			peak.Store(r)
		}
	})
	return func() int64 { stop(); return peak.Load() }
}

// every calls f now and then every interval, until the returned function is
// called (it returns once f has).
func every(interval time.Duration, f func()) func() {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			f()
			select {
			case <-stop:
				return
			case <-time.After(interval):
			}
		}
	}()
	return func() { close(stop); wg.Wait() }
}

// rssMB reads a process's resident set from /proc.
func rssMB(pid int) float64 { return procStatusKB(strconv.Itoa(pid), "VmRSS") / 1024 }

// procStatusKB is a kB field of /proc/<pid>/status ("self" for this
// process), 0 if unknown.
func procStatusKB(pid, field string) float64 {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb
		}
	}
	return 0
}
