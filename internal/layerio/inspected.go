package layerio

import (
	"archive/tar"
	"context"
	"io"

	"github.com/lazyconv/lazyconv/converter"
)

// Inspected is an uncompressed tar that does not come from a blob (a layer
// put together from a zTOC's spans, say), read with the inspection every
// Source gets: Go's tar reader parses it beside the reader, and a read
// fails once the tar breaks a rule (paths, the limits of ctx).
type Inspected struct {
	r       io.Reader
	inspect *inspector
	ended   bool
	verdict error
}

// Inspect wraps the tar r; call Close when done with it.
func Inspect(ctx context.Context, r io.Reader) *Inspected {
	in := &Inspected{r: r, inspect: newInspector(converter.LimitsFrom(ctx))}
	in.inspect.start()
	return in
}

// Read yields the tar, and stops with the rule's error once it breaks one.
func (in *Inspected) Read(p []byte) (int, error) {
	if err := in.inspect.failure(); err != nil {
		return 0, err
	}
	if in.ended {
		return 0, io.EOF
	}
	n, err := in.r.Read(p)
	if n > 0 {
		in.inspect.write(p[:n])
	}
	if err == io.EOF {
		in.ended = true
		in.verdict = in.inspect.finish()
		if in.verdict != nil {
			return n, in.verdict
		}
	}
	if v := in.inspect.failure(); v != nil {
		return n, v
	}
	return n, err
}

// Checked is the verdict once the tar was read to its end.
func (in *Inspected) Checked() error {
	if !in.ended {
		return io.ErrUnexpectedEOF
	}
	return in.verdict
}

// Close stops the inspection of a tar not read to its end.
func (in *Inspected) Close() {
	if !in.ended {
		in.ended = true
		in.inspect.abort()
	}
}

// Check is the inspection of a tar its reader parses itself, from a
// stream that does not come from a blob (see Source.Inline for one that
// does): each header goes to Entry as it is parsed, the byte count after
// the end-of-archive marker to Trailing.
type Check struct{ inspect *inspector }

// NewCheck starts the inspection of one tar under ctx's limits.
func NewCheck(ctx context.Context) *Check {
	return &Check{inspect: newInspector(converter.LimitsFrom(ctx))}
}

// Entry checks one header: nil, or the rule it breaks (ErrInvalidArgument).
func (c *Check) Entry(h *tar.Header) error { return c.inspect.entry(h) }

// Trailing checks the bytes following the end-of-archive marker.
func (c *Check) Trailing(n int64) error { return c.inspect.trailingLimit(n) }

// MaxTrailing is the most bytes after the end-of-archive marker worth
// reading to check them (one past the limit), or -1 for no limit.
func (c *Check) MaxTrailing() int64 {
	if m := c.inspect.limits.MaxTrailingBytes; m >= 0 {
		return m + 1
	}
	return -1
}
