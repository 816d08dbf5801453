package convertcmd

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"

	"golang.org/x/term"

	"github.com/containerd/errdefs"
	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/service"
)

// Display shows a conversion's layers while it runs, fed by the
// service's events: a table redrawn in place on a terminal, one plain line
// per state change otherwise.
type Display struct {
	out    io.Writer
	tty    bool
	mu     sync.Mutex
	order  []string
	layers map[string]converter.LayerStatus
	lines  int
	shown  map[string]converter.LayerState
}

// NewDisplay returns a display writing to out (a live table when out is a terminal).
func NewDisplay(out io.Writer) *Display {
	tty := false
	if f, ok := out.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	return &Display{out: out, tty: tty, layers: map[string]converter.LayerStatus{}, shown: map[string]converter.LayerState{}}
}

// update records a layer's latest status.
func (d *Display) Update(s converter.LayerStatus) {
	d.mu.Lock()
	defer d.mu.Unlock()
	key := s.Digest.String()
	if _, ok := d.layers[key]; !ok {
		d.order = append(d.order, key)
	}
	d.layers[key] = s
}

// Snapshot returns every layer's latest status, in the order first seen.
func (d *Display) Snapshot() []converter.LayerStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]converter.LayerStatus, 0, len(d.order))
	for _, k := range d.order {
		out = append(out, d.layers[k])
	}
	return out
}

// run redraws until ctx is done, then draws the final state.
func (d *Display) Run(ctx context.Context) {
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

func (d *Display) draw() {
	snap := d.Snapshot()
	if !d.tty {
		for _, s := range snap {
			key := s.Digest.String()
			if prev, ok := d.shown[key]; ok && prev == s.State {
				continue
			}
			d.shown[key] = s.State
			fmt.Fprintln(d.out, LayerLine(s))
		}
		return
	}
	var b strings.Builder
	if d.lines > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", d.lines)
	}
	for _, s := range snap {
		b.WriteString("\x1b[2K")
		b.WriteString(LayerLine(s))
		b.WriteByte('\n')
	}
	d.lines = len(snap)
	io.WriteString(d.out, b.String())
}

// LayerLine is one layer's live line: state, bytes in and out, rate, time,
// percent and ETA while it is read, and where it came from.
func LayerLine(s converter.LayerStatus) string {
	line := fmt.Sprintf("%s  %-10s  in %9s  out %9s", ShortDigest(s.Digest.String()), s.State, HumanSize(s.BytesIn), HumanSize(s.BytesOut))
	if s.Elapsed > 0 && s.BytesIn > 0 {
		line += fmt.Sprintf("  %9s/s", HumanSize(int64(float64(s.BytesIn)/s.Elapsed.Seconds())))
	}
	if s.Elapsed > 0 {
		line += fmt.Sprintf("  %6.2fs", s.Elapsed.Seconds())
	}
	if live := s.State == converter.StateConverting || s.State == converter.StateFetching || s.State == converter.StateVerifying; live && s.Size > 0 && s.BytesIn > 0 {
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
	if s.State == converter.StateShared {
		if s.Verified {
			line += "  verified"
		} else {
			line += "  trusted, unread"
		}
	}
	if s.NotLossless != "" {
		line += "  not lossless: " + s.NotLossless
	}
	return line
}

// ShortDigest shortens a digest for display ("sha256:" and 12 hex digits).
func ShortDigest(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}

// PrintSummary prints the final table of a conversion: sizes and times per layer.
func PrintSummary(out io.Writer, layers []converter.LayerStatus, elapsed time.Duration) {
	tw := tabwriter.NewWriter(out, 1, 8, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "SOURCE LAYER\tSTATE\tSOURCE SIZE\tOUTPUT\tOUTPUT SIZE\tTIME\t")
	var inTotal, outTotal int64
	for _, l := range layers {
		inTotal += l.Size
		outTotal += l.OutSize
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.2fs\t\n", ShortDigest(l.Digest.String()), l.State,
			HumanSize(l.Size), ShortDigest(l.Output.String()), HumanSize(l.OutSize), l.Elapsed.Seconds())
	}
	fmt.Fprintf(tw, "total\t\t%s\t\t%s\t%.2fs\t\n", HumanSize(inTotal), HumanSize(outTotal), elapsed.Seconds())
	tw.Flush()
	for _, l := range layers {
		if l.Origin == converter.OriginSnapshot {
			fmt.Fprintf(out, "%s came from its snapshot: the same files, rebuilt as a new tar\n", ShortDigest(l.Digest.String()))
		}
		if l.NotLossless != "" {
			fmt.Fprintf(out, "%s is not lossless: %s\n", ShortDigest(l.Digest.String()), l.NotLossless)
		}
	}
}

// HumanSize formats a byte count in binary units ("1.5 MiB").
func HumanSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// Run runs a conversion (convert streams the service's events to onEvent)
// with the live display on out unless quiet, and returns the result and
// every layer's final status.
func Run(ctx context.Context, out io.Writer, quiet bool, convert func(ctx context.Context, onEvent func(*api.ConvertEvent) error) error) (*api.ConvertResult, []converter.LayerStatus, error) {
	display := NewDisplay(out)
	displayCtx, stopDisplay := context.WithCancel(ctx)
	displayDone := make(chan struct{})
	go func() {
		if !quiet {
			display.Run(displayCtx)
		}
		close(displayDone)
	}()
	var result *api.ConvertResult
	err := convert(ctx, func(ev *api.ConvertEvent) error {
		if l := ev.GetLayer(); l != nil {
			display.Update(service.LayerStatus(l))
		}
		if r := ev.GetResult(); r != nil {
			result = r
		}
		return nil
	})
	stopDisplay()
	<-displayDone
	if err == nil && result == nil {
		err = fmt.Errorf("the conversion service sent no result: %w", errdefs.ErrUnknown)
	}
	return result, display.Snapshot(), err
}
