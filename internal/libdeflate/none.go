//go:build !cgo || !libdeflate

package libdeflate

import (
	"fmt"

	"github.com/containerd/errdefs"
)

// Available reports whether this build has libdeflate: built without the
// libdeflate tag (or without cgo), it has not.
const Available = false

// Version is empty: no libdeflate is linked in.
const Version = ""

// Compressor is unavailable in this build.
type Compressor struct{}

// New reports that this build has no libdeflate.
func New(level int) (*Compressor, error) {
	return nil, fmt.Errorf("this build has no libdeflate (build with -tags libdeflate and Debian's libdeflate-dev): %w", errdefs.ErrUnavailable)
}

// Level is 0.
func (c *Compressor) Level() int { return 0 }

// GzipBound is never called: New never returns a compressor.
func (c *Compressor) GzipBound(n int) int { panic("libdeflate: not in this build") }

// AppendGzip is never called: New never returns a compressor.
func (c *Compressor) AppendGzip(dst, src []byte) []byte { panic("libdeflate: not in this build") }
