//go:build cgo && libdeflate

package libdeflate

/*
#cgo LDFLAGS: -l:libdeflate.a
#include <libdeflate.h>
*/
import "C"

import (
	"fmt"
	"runtime"
	"slices"
	"unsafe"

	"github.com/containerd/errdefs"
)

// Available reports whether this build has libdeflate.
const Available = true

// Version is the version of the libdeflate linked in.
const Version = C.LIBDEFLATE_VERSION_STRING

// Compressor is a libdeflate compressor at one level. It is not safe for
// concurrent use; its C memory is freed when it is collected.
type Compressor struct {
	c     *C.struct_libdeflate_compressor
	level int
}

// New returns a compressor at level (0 to 12).
func New(level int) (*Compressor, error) {
	if level < MinLevel || level > MaxLevel {
		return nil, fmt.Errorf("libdeflate level %d out of range [%d, %d]: %w", level, MinLevel, MaxLevel, errdefs.ErrInvalidArgument)
	}
	c := C.libdeflate_alloc_compressor(C.int(level))
	if c == nil {
		return nil, fmt.Errorf("libdeflate: cannot allocate a level-%d compressor: %w", level, errdefs.ErrResourceExhausted)
	}
	comp := &Compressor{c: c, level: level}
	runtime.AddCleanup(comp, func(c *C.struct_libdeflate_compressor) { C.libdeflate_free_compressor(c) }, c)
	return comp, nil
}

// Level is the compressor's level.
func (c *Compressor) Level() int { return c.level }

// GzipBound is the most bytes AppendGzip appends for n bytes of input.
func (c *Compressor) GzipBound(n int) int {
	bound := int(C.libdeflate_gzip_compress_bound(c.c, C.size_t(n)))
	runtime.KeepAlive(c)
	return bound
}

// AppendGzip compresses src as one gzip member and appends it to dst (it
// allocates only when dst has less than GzipBound(len(src)) to spare).
func (c *Compressor) AppendGzip(dst, src []byte) []byte {
	bound := c.GzipBound(len(src))
	dst = slices.Grow(dst, bound)
	out := dst[len(dst) : len(dst)+bound]
	var in unsafe.Pointer
	if len(src) > 0 {
		in = unsafe.Pointer(&src[0])
	}
	n := C.libdeflate_gzip_compress(c.c, in, C.size_t(len(src)), unsafe.Pointer(&out[0]), C.size_t(bound))
	runtime.KeepAlive(c)
	if n == 0 { // cannot happen: the output buffer is the bound
		panic("libdeflate: output larger than its bound")
	}
	return dst[:len(dst)+int(n)]
}
