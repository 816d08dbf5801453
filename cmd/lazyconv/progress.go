package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"github.com/lazyconv/lazyconv/converter"
)

// progressDisplay shows a conversion's layers while it runs, fed by the
// service's events: a table redrawn in place on a terminal, one plain line
// per state change otherwise.
type progressDisplay struct {
	out    io.Writer
	tty    bool
	mu     sync.Mutex
	order  []string
	layers map[string]converter.LayerStatus
	lines  int
	shown  map[string]converter.LayerState
}

func newProgressDisplay(out io.Writer) *progressDisplay {
	tty := false
	if f, ok := out.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	return &progressDisplay{out: out, tty: tty, layers: map[string]converter.LayerStatus{}, shown: map[string]converter.LayerState{}}
}

// update records a layer's latest status.
func (d *progressDisplay) update(s converter.LayerStatus) {
	d.mu.Lock()
	defer d.mu.Unlock()
	key := s.Digest.String()
	if _, ok := d.layers[key]; !ok {
		d.order = append(d.order, key)
	}
	d.layers[key] = s
}

func (d *progressDisplay) snapshot() []converter.LayerStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]converter.LayerStatus, 0, len(d.order))
	for _, k := range d.order {
		out = append(out, d.layers[k])
	}
	return out
}

// run redraws until ctx is done, then draws the final state.
func (d *progressDisplay) run(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
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
	snap := d.snapshot()
	if !d.tty {
		for _, s := range snap {
			key := s.Digest.String()
			if prev, ok := d.shown[key]; ok && prev == s.State {
				continue
			}
			d.shown[key] = s.State
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
	if live := s.State == converter.StateConverting || s.State == converter.StateFetching; live && s.Size > 0 && s.BytesIn > 0 {
		done := min(float64(s.BytesIn)/float64(s.Size), 1)
		line += fmt.Sprintf("  %3.0f%%", done*100)
		if s.Elapsed > 0 && done < 1 {
			eta := time.Duration(float64(s.Elapsed) * (1 - done) / done).Round(time.Second)
			line += fmt.Sprintf("  eta %s", eta)
		}
	}
	if s.Origin != "" {
		line += "  from " + s.Origin
	}
	if s.NotLossless != "" {
		line += "  not lossless: " + s.NotLossless
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
func printSummary(out io.Writer, layers []converter.LayerStatus, elapsed time.Duration) {
	tw := tabwriter.NewWriter(out, 1, 8, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "SOURCE LAYER\tSTATE\tSOURCE SIZE\tOUTPUT\tOUTPUT SIZE\tTIME\t")
	var inTotal, outTotal int64
	for _, l := range layers {
		inTotal += l.Size
		outTotal += l.OutSize
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.2fs\t\n", shortDigest(l.Digest.String()), l.State,
			humanSize(l.Size), shortDigest(l.Output.String()), humanSize(l.OutSize), l.Elapsed.Seconds())
	}
	fmt.Fprintf(tw, "total\t\t%s\t\t%s\t%.2fs\t\n", humanSize(inTotal), humanSize(outTotal), elapsed.Seconds())
	tw.Flush()
	for _, l := range layers {
		if l.Origin == converter.OriginSnapshot {
			fmt.Fprintf(out, "%s came from its snapshot: the same files, rebuilt as a new tar\n", shortDigest(l.Digest.String()))
		}
		if l.NotLossless != "" {
			fmt.Fprintf(out, "%s is not lossless: %s\n", shortDigest(l.Digest.String()), l.NotLossless)
		}
	}
}
