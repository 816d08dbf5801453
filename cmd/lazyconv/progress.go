package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"github.com/lazyconv/lazyconv/converter"
)

// progressDisplay shows a conversion's layers while it runs: a table redrawn
// in place on a terminal, one plain line per state change otherwise.
type progressDisplay struct {
	out   io.Writer
	tty   bool
	p     *converter.Progress
	lines int
	seen  map[string]converter.LayerState
}

func newProgressDisplay(out io.Writer, p *converter.Progress) *progressDisplay {
	tty := false
	if f, ok := out.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	return &progressDisplay{out: out, tty: tty, p: p, seen: map[string]converter.LayerState{}}
}

// run refreshes the display until ctx is done, then draws the final state.
func (d *progressDisplay) run(ctx context.Context) {
	interval := 100 * time.Millisecond
	if !d.tty {
		interval = 250 * time.Millisecond
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			d.draw()
			return
		case <-t.C:
			d.draw()
		}
	}
}

func (d *progressDisplay) draw() {
	snap := d.p.Snapshot()
	if !d.tty {
		for _, s := range snap {
			key := s.Digest.String()
			if prev, ok := d.seen[key]; ok && prev == s.State {
				continue
			}
			d.seen[key] = s.State
			fmt.Fprintln(d.out, layerLine(s))
		}
		return
	}
	var b strings.Builder
	if d.lines > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", d.lines)
	}
	for _, s := range snap {
		b.WriteString("\x1b[2K")
		b.WriteString(layerLine(s))
		b.WriteByte('\n')
	}
	d.lines = len(snap)
	io.WriteString(d.out, b.String())
}

func layerLine(s converter.LayerStatus) string {
	line := fmt.Sprintf("%s  %-10s  in %9s  out %9s", shortDigest(s.Digest.String()), s.State, humanSize(s.BytesIn), humanSize(s.BytesOut))
	if s.Elapsed > 0 && s.BytesIn > 0 {
		line += fmt.Sprintf("  %9s/s", humanSize(int64(float64(s.BytesIn)/s.Elapsed.Seconds())))
	}
	if s.Elapsed > 0 {
		line += fmt.Sprintf("  %6.2fs", s.Elapsed.Seconds())
	}
	return line
}

func shortDigest(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}

// printSummary prints the final table of a conversion: sizes and times per layer.
func printSummary(out io.Writer, res *converter.ImageResult, p *converter.Progress, elapsed time.Duration) {
	status := map[string]converter.LayerStatus{}
	for _, s := range p.Snapshot() {
		status[s.Digest.String()] = s
	}
	tw := tabwriter.NewWriter(out, 1, 8, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "SOURCE LAYER\tSTATE\tSOURCE SIZE\tOUTPUT\tOUTPUT SIZE\tTIME\t")
	var inTotal, outTotal int64
	for _, l := range res.Layers {
		s := status[l.Source.Digest.String()]
		inTotal += l.Source.Size
		outTotal += l.Desc.Size
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.2fs\t\n", shortDigest(l.Source.Digest.String()), l.State,
			humanSize(l.Source.Size), shortDigest(l.Desc.Digest.String()), humanSize(l.Desc.Size), s.Elapsed.Seconds())
	}
	fmt.Fprintf(tw, "total\t\t%s\t\t%s\t%.2fs\t\n", humanSize(inTotal), humanSize(outTotal), elapsed.Seconds())
	tw.Flush()
}
