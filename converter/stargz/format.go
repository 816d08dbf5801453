package stargz

import (
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/format"
)

// The formats of this package, registered as image-converter plugins
// (see package format): estargz, estargz-optimized and zstdchunked.
func init() {
	format.Register(format.New(format.Format{Name: "estargz", Usage: "convert layers to eStargz (lossless)", Flag: true, OptionPrefix: "estargz", Order: 10},
		DefaultEStargzOptions, EStargzOptions.Validate,
		func(o EStargzOptions, _ *api.ConvertRequest) (format.Plan, error) { return format.Every(NewEStargz(o)) }))
	format.Register(format.New(format.Format{Name: "estargz-optimized", Usage: "convert layers to prioritized eStargz from a record (not lossless)", OptionPrefix: "estargz", Order: 20},
		DefaultPrioritizedOptions, PrioritizedOptions.Validate, prioritizedPlan))
	format.Register(format.New(format.Format{Name: "zstdchunked", Usage: "convert layers to zstd:chunked (lossless; implies --oci)", Flag: true, OCI: true, OptionPrefix: "zstdchunked", Order: 30},
		DefaultZstdChunkedOptions, ZstdChunkedOptions.Validate,
		func(o ZstdChunkedOptions, _ *api.ConvertRequest) (format.Plan, error) {
			return format.Every(NewZstdChunked(o))
		}))
}

// prioritizedPlan puts a request's recorded files first in the layers of
// the manifest it names.
func prioritizedPlan(o PrioritizedOptions, req *api.ConvertRequest) (format.Plan, error) {
	files := map[int][]string{}
	for _, lf := range req.GetPrioritized() {
		files[int(lf.GetLayerIndex())] = lf.GetPaths()
	}
	manifest := req.GetPrioritizedManifest()
	o.Reuse = req.GetReuse()
	return format.Plan{Layers: func(m ocispec.Descriptor, index int, _ ocispec.Descriptor) (converter.LayerConverter, error) {
		lo := o
		if m.Digest.String() == manifest {
			lo.Files = files[index]
		}
		return NewPrioritizedEStargz(lo)
	}}, nil
}
