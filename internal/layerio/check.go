package layerio

import (
	"archive/tar"
	"context"

	"github.com/lazyconv/lazyconv/converter"
)

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
