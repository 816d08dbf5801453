// Package format is lazyconv's table of layer formats, as containerd plugins.
//
// Each format is a Format, which its own package registers (Register) as a
// plugin of type io.containerd.image-converter.v1 whose ID is the format's
// name and whose config section holds the format's options
// ([plugins.'io.containerd.image-converter.v1.estargz'] compression_level
// = 5). The lazyconv service requires that type and builds its table from
// the plugins that initialized: containerd's disabled_plugins removes a
// format, and a format that cannot run here (nydus without its builder) is
// skipped with the reason, as `ctr plugins ls` shows. The sidecar and the
// embedded CLI run the same registrations in-process (Load). A format from
// outside this repository is one more package imported into the build.
package format

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/containerd/errdefs"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/options"
)

// Format is one layer format: what requests, the CLI's flags and the
// configuration call it, its options, and how it converts an image.
type Format struct {
	// Name is what requests and the configuration call the format, and the
	// ID of its plugin.
	Name string
	// Usage says what it does (the CLI flag's help).
	Usage string
	// Flag: `image convert` takes --<Name> for it.
	Flag bool
	// OCI: the format has no Docker media types, so it implies --oci.
	OCI bool
	// OptionPrefix starts its options' CLI flags ("estargz" for
	// --estargz-compression-level); formats sharing one share the flags. ""
	// when it has none.
	OptionPrefix string
	// Order places the format in tables and listings (lower first; formats
	// from outside this repository: 0, after lazyconv's own, by name).
	Order int

	newOptions func() any // a pointer to fresh options at the format's defaults
	validate   func(opts any) error
	available  func(ctx context.Context, opts any) error
	plan       func(opts any, req *api.ConvertRequest) (Plan, error)
	verifier   converter.ManifestVerifier
	// configured are the values of its plugin's config section, by option
	// name.
	configured map[string]string
}

// Plan is how a format converts an image.
type Plan struct {
	// Layers picks each layer's converter.
	Layers converter.LayerPlan
	// AppendLayer, if not nil, adds a layer to each converted manifest
	// (nydus's bootstrap).
	AppendLayer converter.AppendLayerFunc
	// Manifests, if not nil, converts each image manifest in place of
	// Layers and AppendLayer: layers kept, the manifest annotated (SOCI).
	Manifests converter.ManifestFormat
	// Finish, if not nil, makes the converted image's target into the one
	// stored (SOCI's index binding).
	Finish converter.FinishFunc
}

// New fills a Format from typed functions over the format's options O:
// defaults returns them at their defaults, validate checks a set, build
// makes the plan of a request.
func New[O any](f Format, defaults func() O, validate func(O) error, build func(O, *api.ConvertRequest) (Plan, error)) Format {
	f.newOptions = func() any { o := defaults(); return &o }
	f.validate = func(o any) error { return validate(*o.(*O)) }
	f.plan = func(o any, req *api.ConvertRequest) (Plan, error) { return build(*o.(*O), req) }
	return f
}

// WithAvailability adds a check that the format can run here with the given
// options (an external builder found, say). A plugin whose check fails is
// skipped, with the check's error as the reason.
func (f Format) WithAvailability(available func(ctx context.Context, opts any) error) Format {
	f.available = available
	return f
}

// WithVerifier adds a check of what the format adds to manifests, which
// `image verify` runs on the manifests it claims.
func (f Format) WithVerifier(v converter.ManifestVerifier) Format {
	f.verifier = v
	return f
}

// Verifier is the format's check of what it adds to manifests (nil: none).
func (f *Format) Verifier() converter.ManifestVerifier { return f.verifier }

// Every is the plan of a format with one converter for every layer.
func Every(lc converter.LayerConverter, err error) (Plan, error) {
	if err != nil {
		return Plan{}, err
	}
	return Plan{Layers: converter.Every(lc)}, nil
}

// NoOptions are the options of a format that has none.
func NoOptions() struct{} { return struct{}{} }

// NoValidation validates NoOptions.
func NoValidation(struct{}) error { return nil }

// Options lists the format's named options at its defaults, configured
// values included.
func (f Format) Options() []options.Field {
	if f.newOptions == nil {
		return nil
	}
	opts, err := f.ResolveOptions(nil)
	if err != nil { // configured values were checked when they were set
		opts = f.newOptions()
	}
	return options.Fields(opts)
}

// Configured returns the values its plugin's config section set, by option
// name.
func (f Format) Configured() map[string]string { return maps.Clone(f.configured) }

// WithConfigured returns the format with these values configured (by option
// name), once they resolve to valid options.
func (f Format) WithConfigured(values map[string]string) (Format, error) {
	f.configured = maps.Clone(values)
	if _, err := f.ResolveOptions(nil); err != nil {
		return f, err
	}
	return f, nil
}

// ResolveOptions returns the format's options: its defaults, then its
// configured values, then the request's (by option name). A request may
// repeat a service-only option's configured value but not change it.
func (f Format) ResolveOptions(requested map[string]string) (any, error) {
	if f.newOptions == nil {
		return nil, nil
	}
	opts := f.newOptions()
	set := map[string]bool{}
	for _, name := range slices.Sorted(maps.Keys(f.configured)) {
		if err := options.Set(opts, name, f.configured[name]); err != nil {
			return nil, fmt.Errorf("configuration of %s: %w", f.Name, err)
		}
		set[name] = true
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
				return nil, fmt.Errorf("the service uses its configured %s %s (%q), not %q: set %s in [plugins.'%s'] of its configuration: %w",
					f.Name, name, fld.Value, v, ConfigKey(name), URI(f.Name), errdefs.ErrPermissionDenied)
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

// Available reports whether the format can run here with opts (nil when it
// has no check).
func (f Format) Available(ctx context.Context, opts any) error {
	if f.available == nil {
		return nil
	}
	return f.available(ctx, opts)
}

// Plan builds the plan of a request with resolved options.
func (f Format) Plan(opts any, req *api.ConvertRequest) (Plan, error) { return f.plan(opts, req) }

// dependent names the options whose defaults follow others' values.
func (f Format) dependent() []string {
	if f.newOptions == nil {
		return nil
	}
	if d, ok := f.newOptions().(options.DependentDefaults); ok {
		return d.Dependent()
	}
	return nil
}

// sorted orders formats by Order (0 last), then name.
func sorted(fs []Format) []Format {
	slices.SortStableFunc(fs, func(a, b Format) int {
		ao, bo := a.Order, b.Order
		if ao == 0 {
			ao = 1 << 30
		}
		if bo == 0 {
			bo = 1 << 30
		}
		if ao != bo {
			return ao - bo
		}
		return strings.Compare(a.Name, b.Name)
	})
	return fs
}
