package converter

import "context"

type scratchDirKey struct{}

// WithScratchDir returns a context whose conversions keep their scratch
// files (a layer's TOC entries while it is written) in dir. The files are
// unlinked as soon as they are made, so nothing is left there after a
// crash; the daemon points this at its own state directory.
func WithScratchDir(ctx context.Context, dir string) context.Context {
	return context.WithValue(ctx, scratchDirKey{}, dir)
}

// ScratchDirFrom returns the scratch directory of ctx ("" is the system's
// temporary directory).
func ScratchDirFrom(ctx context.Context) string {
	dir, _ := ctx.Value(scratchDirKey{}).(string)
	return dir
}
