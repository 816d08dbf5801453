//go:build cgo

package soci

import (
	"context"

	"github.com/containerd/containerd/v2/core/content"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/format"
)

// The soci format, registered as an image-converter plugin (see package
// format): layers kept as they are, media types made OCI, a zTOC per gzip
// layer and the SOCI index v2 bound into a SOCI-enabled image.
func init() {
	format.Register(format.New(format.Format{Name: "soci",
		Usage: "add SOCI indexes (zTOCs of the gzip layers, kept as they are) and bind them into a SOCI-enabled image (index manifest v2; implies --oci)",
		Flag:  true, OCI: true, OptionPrefix: "soci", Order: 45},
		DefaultOptions, Options.Validate, plan).WithVerifier(Verifier()))
}

func plan(o Options, _ *api.ConvertRequest) (format.Plan, error) {
	return format.Plan{Manifests: Manifests(o), Finish: func(ctx context.Context, cs content.Store, target ocispec.Descriptor) (ocispec.Descriptor, error) {
		return Bind(ctx, cs, target, o)
	}}, nil
}
