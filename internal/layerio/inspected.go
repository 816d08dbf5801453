package layerio

import (
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
