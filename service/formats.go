package service

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/nydus"
	"github.com/lazyconv/lazyconv/converter/options"
	"github.com/lazyconv/lazyconv/converter/recompress"
	"github.com/lazyconv/lazyconv/converter/stargz"
)

// Formats a request can name.
const (
	FormatEStargz     = "estargz"
	FormatZstdChunked = "zstdchunked"
	FormatNydus       = "nydus"
	// FormatEStargzOptimized is prioritized (not lossless) eStargz; requests
	// name the files to put first.
	FormatEStargzOptimized = "estargz-optimized"
	FormatUncompress       = "uncompress"
	FormatGzip             = "gzip"
	FormatZstd             = "zstd"
	// FormatNone converts media types only (with oci).
	FormatNone = "none"
)

// Format is one layer format the service serves: an entry of the format
// table, which drives request and configuration validation, Capabilities,
// and the CLI's flags. A new format is a package of its own plus one entry.
type Format struct {
	// Name is what requests and the configuration call the format.
	Name string
	// Usage says what it does (the CLI flag's help).
	Usage string
	// Flag: `image convert` takes --<Name> for it.
	Flag bool
	// OCI: the format has no Docker media types, so it implies --oci.
	OCI bool
	// OptionPrefix starts its options' configuration keys and CLI flags
	// ("estargz" for estargz_compression_level and
	// --estargz-compression-level); "" when it has none.
	OptionPrefix string

	newOptions func() any // a pointer to fresh options at the format's defaults
	validate   func(opts any) error
	available  func(ctx context.Context, opts any) error
	plan       func(opts any, req *api.ConvertRequest) (plan, error)
}

// plan is how a format converts an image.
type plan struct {
	layers      converter.LayerPlan
	appendLayer converter.AppendLayerFunc
}

// Options lists the format's named options at their defaults.
func (f Format) Options() []options.Field {
	if f.newOptions == nil {
		return nil
	}
	return options.Fields(f.newOptions())
}

// newFormat fills a table entry from typed functions over the format's options O.
func newFormat[O any](f Format, defaults func() O, validate func(O) error, build func(O, *api.ConvertRequest) (plan, error)) Format {
	f.newOptions = func() any { o := defaults(); return &o }
	f.validate = func(o any) error { return validate(*o.(*O)) }
	f.plan = func(o any, req *api.ConvertRequest) (plan, error) { return build(*o.(*O), req) }
	return f
}

// every is the plan of a format with one converter for every layer.
func every(lc converter.LayerConverter, err error) (plan, error) {
	if err != nil {
		return plan{}, err
	}
	return plan{layers: converter.Every(lc)}, nil
}

func noOptions() struct{} { return struct{}{} }

func noValidation(struct{}) error { return nil }

func recompressFormat(name, usage string, flag bool, target converter.Compression) Format {
	return newFormat(Format{Name: name, Usage: usage, Flag: flag}, noOptions, noValidation,
		func(struct{}, *api.ConvertRequest) (plan, error) {
			return every(recompress.New(target, recompress.Options{}))
		})
}

// formats is the format table, in the order Capabilities reports it.
var formats = []Format{
	newFormat(Format{Name: FormatEStargz, Usage: "convert layers to eStargz (lossless)", Flag: true, OptionPrefix: "estargz"},
		stargz.DefaultEStargzOptions, stargz.EStargzOptions.Validate,
		func(o stargz.EStargzOptions, _ *api.ConvertRequest) (plan, error) { return every(stargz.NewEStargz(o)) }),
	newFormat(Format{Name: FormatEStargzOptimized, Usage: "convert layers to prioritized eStargz from a record (not lossless)", OptionPrefix: "estargz"},
		stargz.DefaultPrioritizedOptions, stargz.PrioritizedOptions.Validate, prioritizedPlan),
	newFormat(Format{Name: FormatZstdChunked, Usage: "convert layers to zstd:chunked (lossless; implies --oci)", Flag: true, OCI: true, OptionPrefix: "zstdchunked"},
		stargz.DefaultZstdChunkedOptions, stargz.ZstdChunkedOptions.Validate,
		func(o stargz.ZstdChunkedOptions, _ *api.ConvertRequest) (plan, error) {
			return every(stargz.NewZstdChunked(o))
		}),
	withAvailability(newFormat(Format{Name: FormatNydus, Usage: "convert layers to nydus and merge their bootstraps (needs the nydus-image builder; implies --oci)", Flag: true, OCI: true, OptionPrefix: "nydus"},
		nydus.DefaultOptions, nydus.Options.Validate, nydusPlan),
		func(ctx context.Context, o any) error { _, err := o.(*nydus.Options).Available(ctx); return err }),
	recompressFormat(FormatUncompress, "convert layers to uncompressed tar", true, converter.Uncompressed),
	recompressFormat(FormatGzip, "convert layers to gzip", false, converter.Gzip),
	recompressFormat(FormatZstd, "convert layers to zstd", false, converter.Zstd),
}

func withAvailability(f Format, available func(context.Context, any) error) Format {
	f.available = available
	return f
}

func prioritizedPlan(o stargz.PrioritizedOptions, req *api.ConvertRequest) (plan, error) {
	files := map[int][]string{}
	for _, lf := range req.GetPrioritized() {
		files[int(lf.GetLayerIndex())] = lf.GetPaths()
	}
	manifest := req.GetPrioritizedManifest()
	o.Reuse = req.GetReuse()
	return plan{layers: func(m ocispec.Descriptor, index int, _ ocispec.Descriptor) (converter.LayerConverter, error) {
		lo := o
		if m.Digest.String() == manifest {
			lo.Files = files[index]
		}
		return stargz.NewPrioritizedEStargz(lo)
	}}, nil
}

func nydusPlan(o nydus.Options, _ *api.ConvertRequest) (plan, error) {
	lc, err := nydus.New(o)
	if err != nil {
		return plan{}, err
	}
	hook, err := nydus.MergeHook(o)
	if err != nil {
		return plan{}, err
	}
	return plan{layers: converter.Every(lc), appendLayer: hook}, nil
}

// Formats returns the format table.
func Formats() []Format { return slices.Clone(formats) }

// FormatNames lists the formats' names, in table order.
func FormatNames() []string {
	names := make([]string, 0, len(formats))
	for _, f := range formats {
		names = append(names, f.Name)
	}
	return names
}

// LookupFormat returns the table entry of a format name.
func LookupFormat(name string) (Format, error) {
	for _, f := range formats {
		if f.Name == name {
			return f, nil
		}
	}
	return Format{}, fmt.Errorf("unknown format %q (known: %s, %s): %w",
		name, strings.Join(FormatNames(), ", "), FormatNone, errdefs.ErrInvalidArgument)
}

// ExclusiveFlagsMessage is the CLI's error when more than one format flag is given.
func ExclusiveFlagsMessage() string {
	var flags []string
	for _, f := range formats {
		if f.Flag {
			flags = append(flags, "--"+f.Name)
		}
	}
	if len(flags) < 2 {
		return strings.Join(flags, "") + " is the only format flag"
	}
	return strings.Join(flags[:len(flags)-1], ", ") + " and " + flags[len(flags)-1] + " exclude each other"
}

// resolveOptions returns the format's options: its defaults, then the
// configured values, then the request's (by option name). A request may
// repeat a service-only option's configured value but not change it.
func (f Format) resolveOptions(configured map[string]string, requested map[string]string) (any, error) {
	if f.newOptions == nil {
		return nil, nil
	}
	opts := f.newOptions()
	set := map[string]bool{}
	if f.OptionPrefix != "" {
		for _, fld := range options.Fields(opts) {
			if v, ok := configured[fld.ConfigKey(f.OptionPrefix)]; ok {
				if err := options.Set(opts, fld.Name, v); err != nil {
					return nil, fmt.Errorf("configuration of %s: %w", f.Name, err)
				}
				set[fld.Name] = true
			}
		}
	}
	current := map[string]options.Field{}
	for _, fld := range options.Fields(opts) {
		current[fld.Name] = fld
	}
	for _, name := range slices.Sorted(maps.Keys(requested)) {
		v := requested[name]
		fld, known := current[name]
		if !known {
			return nil, fmt.Errorf("format %s has no option %q (known: %s): %w",
				f.Name, name, strings.Join(options.Names(opts), ", "), errdefs.ErrInvalidArgument)
		}
		if fld.ServiceOnly {
			if v != "" && v != fld.Value {
				return nil, fmt.Errorf("the service uses its configured %s %s (%q), not %q: set %s in its configuration: %w",
					f.Name, name, fld.Value, v, fld.ConfigKey(f.OptionPrefix), errdefs.ErrPermissionDenied)
			}
			continue
		}
		if err := options.Set(opts, name, v); err != nil {
			return nil, err
		}
		set[name] = true
	}
	if d, ok := opts.(options.DependentDefaults); ok {
		d.FollowDefaults(func(name string) bool { return set[name] })
	}
	if err := f.validate(opts); err != nil {
		return nil, fmt.Errorf("%s options: %w", f.Name, err)
	}
	return opts, nil
}

// ValidateOptions checks a request's options for a format against the
// format's defaults, as a client can before it connects: unknown names, bad
// values and invalid combinations are ErrInvalidArgument. Options only a
// service sets are left to the service.
func ValidateOptions(format string, requested map[string]string) error {
	f, err := LookupFormat(format)
	if err != nil {
		return err
	}
	own := map[string]string{}
	for k, v := range requested {
		own[k] = v
	}
	for _, fld := range f.Options() {
		if fld.ServiceOnly {
			delete(own, fld.Name)
		}
	}
	_, err = f.resolveOptions(nil, own)
	return err
}
