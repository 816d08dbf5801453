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
	var peak atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			if r := int64(rssMB(d.cmd.Process.Pid)); r > peak.Load() {
				peak.Store(r)
			}
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	out, err := exec.Command(cli, "--address", d.address, "image", "convert", "--estargz", "--oci", "-q", "memory:src", "memory:esgz").CombinedOutput()
	close(stop)
	wg.Wait()
	if err != nil {
		return fmt.Errorf("convert: %v: %s", err, out)
	}
	var after []string
	for i := 1; i <= 6; i++ {
		time.Sleep(5 * time.Second)
		after = append(after, fmt.Sprintf("%ds %.0f", i*5, rssMB(d.cmd.Process.Pid)))
	}
	fmt.Printf("\ndaemon memory (containerd-lazyconv RSS, MB): idle %.0f, peak %d converting %d layers; after: %s (target: within 20 MB of idle by 30s)\n",
		idle, peak.Load(), len(layers), strings.Join(after, ", "))
	return nil
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
