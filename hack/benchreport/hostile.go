package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/internal/convertcmd"
	"github.com/lazyconv/lazyconv/internal/imagegen"
)

// hostileSection converts every class of the hostile corpus (bombs of
// bomb bytes) with the lazyconv binary in embedded mode, each in a fresh
// store, and reports whether it was refused and the peak RSS of the
// conversion (target: refused, under 200 MB).
func hostileSection(bin string, bomb int64) error {
	if _, err := os.Stat(bin); err != nil {
		fmt.Printf("hostile input: skipped, %s not built (run make build)\n", bin)
		return nil
	}
	work, err := os.MkdirTemp("", "lazyconv-hostile-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	fmt.Printf("\nhostile input (bombs of %s), embedded, each in a fresh store; target: refused, peak RSS < 200 MB\n", fmtMiB(bomb))
	fmt.Printf("%-36s %-10s %10s  %s\n", "class", "outcome", "peak RSS", "error")
	worst := 0.0
	for i, h := range convertertest.HostileImages(bomb) {
		if h.DeleteLayer >= 0 {
			fmt.Printf("%-36s %-10s %10s  %s\n", h.Name, "-", "-", "needs a store missing a blob; an archive cannot express it (covered by the tests)")
			continue
		}
		root := filepath.Join(work, fmt.Sprintf("root-%d", i))
		archive := filepath.Join(work, fmt.Sprintf("hostile-%d.tar", i))
		if err := imagegen.WriteOCIArchiveFile(archive, h.Image); err != nil {
			return err
		}
		if out, err := exec.Command(bin, "--root", root, "image", "import", archive).CombinedOutput(); err != nil {
			fmt.Printf("%-36s %-10s %10s  %s\n", h.Name, "refused", "-", "at import: "+lastLine(string(out)))
			continue
		}
		args := append([]string{"--root", root}, limitArgs(h.Limits)...)
		args = append(args, "image", "convert", "--estargz", "--oci", "-q", h.Image.Name, h.Image.Name+"-esgz")
		out, rss, err := measuredRun(exec.Command(bin, args...))
		outcome := "refused"
		if err == nil {
			outcome = "CONVERTED"
		}
		worst = max(worst, rss)
		fmt.Printf("%-36s %-10s %7.0f MB  %s\n", h.Name, outcome, rss, lastLine(string(out)))
		_ = os.RemoveAll(root)
	}
	fmt.Printf("worst peak RSS on hostile input: %.0f MB (target < 200 MB)\n", worst)
	return nil
}

// limitArgs are the CLI flags of a case's limits (every limit the CLI has).
func limitArgs(l converter.Limits) []string {
	var out []string
	for _, f := range convertcmd.LimitsOf(&l) {
		if *f.Value != 0 {
			out = append(out, "--"+f.Name, strconv.FormatInt(*f.Value, 10))
		}
	}
	return out
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	line := lines[len(lines)-1]
	if len(line) > 110 {
		line = "..." + line[len(line)-110:]
	}
	return line
}
