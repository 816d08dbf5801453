package recompress

import (
	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/format"
)

// The formats of this package, registered as image-converter plugins (see
// package format): uncompress, gzip and zstd.
func init() {
	for _, f := range []struct {
		name, usage string
		flag        bool
		order       int
		target      converter.Compression
	}{
		{"uncompress", "convert layers to uncompressed tar", true, 50, converter.Uncompressed},
		{"gzip", "convert layers to gzip", false, 60, converter.Gzip},
		{"zstd", "convert layers to zstd", false, 70, converter.Zstd},
	} {
		format.Register(format.New(format.Format{Name: f.name, Usage: f.usage, Flag: f.flag, Order: f.order}, format.NoOptions, format.NoValidation,
			func(struct{}, *api.ConvertRequest) (format.Plan, error) {
				return format.Every(New(f.target, Options{}))
			}))
	}
}
