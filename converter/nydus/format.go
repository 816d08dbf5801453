package nydus

import (
	"context"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/format"
)

// The nydus format, registered as an image-converter plugin (see package
// format); it is skipped, with the reason, where its builder cannot run.
func init() {
	format.Register(format.New(format.Format{Name: "nydus", Usage: "convert layers to nydus and merge their bootstraps (needs the nydus-image builder; implies --oci)", Flag: true, OCI: true, OptionPrefix: "nydus", Order: 40},
		DefaultOptions, Options.Validate, plan).
		WithAvailability(func(ctx context.Context, o any) error { _, err := o.(*Options).Available(ctx); return err }))
}

func plan(o Options, _ *api.ConvertRequest) (format.Plan, error) {
	lc, err := New(o)
	if err != nil {
		return format.Plan{}, err
	}
	hook, err := MergeHook(o)
	if err != nil {
		return format.Plan{}, err
	}
	return format.Plan{Layers: converter.Every(lc), AppendLayer: hook}, nil
}
