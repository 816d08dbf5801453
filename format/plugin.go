package format

import (
	"context"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"
)

// PluginType is the containerd plugin type of formats.
const PluginType plugin.Type = "io.containerd.image-converter.v1"

// URI is the plugin URI of a format ("io.containerd.image-converter.v1.estargz"):
// its config section's name, and what disabled_plugins names.
func URI(name string) string { return PluginType.String() + "." + name }

// ConfigKey is an option's key in its format's config section: the option
// name with underscores ("compression_level").
func ConfigKey(option string) string { return strings.ReplaceAll(option, "-", "_") }

// Config is a format plugin's config section: its options by ConfigKey, as
// TOML decodes them (int64, string or bool).
type Config map[string]any

var (
	mu         sync.Mutex
	registered []Format
)

// Register registers f as the image-converter plugin named f.Name. Its
// config section holds f's options at their defaults (but those whose
// default follows another option's value); its instance is the *Format
// with the section's values configured, or it is skipped when the format
// cannot run here. Call it from the init of the format's package.
func Register(f Format) {
	mu.Lock()
	registered = append(registered, f)
	mu.Unlock()
	defaults := f.defaultConfig()
	registry.Register(&plugin.Registration{
		Type:   PluginType,
		ID:     f.Name,
		Config: &defaults,
		InitFn: func(ic *plugin.InitContext) (any, error) {
			raw, ok := ic.Config.(*Config)
			if !ok {
				return nil, fmt.Errorf("%s: configuration of type %T, not %T: %w", URI(f.Name), ic.Config, &Config{}, errdefs.ErrInvalidArgument)
			}
			return Init(ic.Context, f, *raw)
		},
	})
}

// Registered lists every registered format at its defaults, in table order:
// what a build knows, whether or not a service enables it (the CLI's flags).
func Registered() []Format {
	mu.Lock()
	defer mu.Unlock()
	return sorted(slices.Clone(registered))
}

// Lookup returns the registered format of that name.
func Lookup(name string) (Format, error) {
	for _, f := range Registered() {
		if f.Name == name {
			return f, nil
		}
	}
	var names []string
	for _, f := range Registered() {
		names = append(names, f.Name)
	}
	return Format{}, fmt.Errorf("unknown format %q (known: %s): %w", name, strings.Join(names, ", "), errdefs.ErrInvalidArgument)
}

// Init is a format plugin's initialization: the section's values, checked
// against the format's options, configured; skipped (plugin.ErrSkipPlugin,
// with the reason) when the format cannot run here.
func Init(ctx context.Context, f Format, section Config) (*Format, error) {
	values, err := f.parseConfig(section)
	if err != nil {
		return nil, err
	}
	if f, err = f.WithConfigured(values); err != nil {
		return nil, fmt.Errorf("[plugins.'%s']: %w", URI(f.Name), err)
	}
	opts, err := f.ResolveOptions(nil)
	if err != nil {
		return nil, err
	}
	if err := f.Available(ctx, opts); err != nil {
		// The format comes with the skip: what it was configured with stays
		// known (the builder a listing probes).
		return &f, fmt.Errorf("%v: %w", err, plugin.ErrSkipPlugin)
	}
	return &f, nil
}

// defaultConfig is the format's config section at its defaults, typed as
// TOML decodes it.
func (f Format) defaultConfig() Config {
	out := Config{}
	dependent := f.dependent()
	for _, fld := range f.Options() {
		if slices.Contains(dependent, fld.Name) {
			continue // its default follows another option's value
		}
		out[ConfigKey(fld.Name)] = typed(fld.Kind, fld.Value)
	}
	return out
}

// parseConfig reads a section: every key must be one of the format's
// options, of its kind. Values equal to the defaults are configured too
// (containerd hands the plugin its whole default section), but for the
// options whose defaults follow others', which count only when given.
func (f Format) parseConfig(section Config) (map[string]string, error) {
	fields := map[string]reflect.Kind{}
	defaults := f.defaultConfig()
	for _, fld := range f.Options() {
		fields[ConfigKey(fld.Name)] = fld.Kind
	}
	values := map[string]string{}
	for _, k := range slices.Sorted(maps.Keys(section)) {
		kind, known := fields[k]
		if !known {
			return nil, fmt.Errorf("[plugins.'%s']: unknown key %q (known: %s): %w", URI(f.Name), k,
				strings.Join(slices.Sorted(maps.Keys(fields)), ", "), errdefs.ErrInvalidArgument)
		}
		text, ok := scalar(section[k], kind)
		if !ok {
			return nil, fmt.Errorf("[plugins.'%s']: %s takes a %s, not %v: %w", URI(f.Name), k, kind, section[k], errdefs.ErrInvalidArgument)
		}
		values[strings.ReplaceAll(k, "_", "-")] = text
	}
	for k, v := range defaults { // what the section left out
		if _, ok := section[k]; !ok {
			text, _ := scalar(v, fields[k])
			values[strings.ReplaceAll(k, "_", "-")] = text
		}
	}
	return values, nil
}

// typed is an option's text as TOML decodes its kind.
func typed(kind reflect.Kind, text string) any {
	switch kind {
	case reflect.Int, reflect.Int32, reflect.Int64:
		n, _ := strconv.ParseInt(text, 10, 64)
		return n
	case reflect.Bool:
		b, _ := strconv.ParseBool(text)
		return b
	default:
		return text
	}
}

// scalar is a TOML value as an option's text, if it is of the option's kind.
func scalar(v any, kind reflect.Kind) (string, bool) {
	switch kind {
	case reflect.Int, reflect.Int32, reflect.Int64:
		switch n := v.(type) {
		case int64:
			return strconv.FormatInt(n, 10), true
		case int:
			return strconv.Itoa(n), true
		}
	case reflect.Bool:
		if b, ok := v.(bool); ok {
			return strconv.FormatBool(b), true
		}
	case reflect.String:
		if s, ok := v.(string); ok {
			return s, true
		}
	}
	return "", false
}

// Loaded is what an in-process load of the format plugins gave: the formats
// that initialized, in table order, and the reasons of those that did not.
type Loaded struct {
	Formats []*Format
	// Skipped holds, by name, why a format cannot run here.
	Skipped map[string]error
	// Unavailable are the skipped formats, as configured.
	Unavailable []*Format
	// Disabled names the formats disabled_plugins removed.
	Disabled []string
}

// Find returns the format of that name as it was configured, whether it
// initialized or was skipped.
func (l Loaded) Find(name string) (*Format, bool) {
	for _, fs := range [][]*Format{l.Formats, l.Unavailable} {
		for _, f := range fs {
			if f.Name == name {
				return f, true
			}
		}
	}
	return nil, false
}

// Load initializes every registered format plugin in-process, as containerd
// does for the lazyconv plugin: sections holds config sections by plugin URI
// or format name, disabled the plugin URIs or names to leave out. It is how
// the sidecar and the embedded CLI build their table from the same
// registrations. A section for no registered format, or a format whose
// configuration is invalid, is an error.
func Load(ctx context.Context, sections map[string]Config, disabled []string) (Loaded, error) {
	out := Loaded{Skipped: map[string]error{}}
	known := map[string]bool{}
	for _, f := range Registered() {
		known[f.Name], known[URI(f.Name)] = true, true
	}
	for k := range sections {
		if !known[k] {
			return out, fmt.Errorf("[plugins.'%s']: no such format plugin: %w", k, errdefs.ErrInvalidArgument)
		}
	}
	for _, f := range Registered() {
		if slices.Contains(disabled, f.Name) || slices.Contains(disabled, URI(f.Name)) {
			out.Disabled = append(out.Disabled, f.Name)
			continue
		}
		section := f.defaultConfig()
		for _, k := range []string{f.Name, URI(f.Name)} {
			maps.Copy(section, sections[k])
		}
		inst, err := Init(ctx, f, section)
		if plugin.IsSkipPlugin(err) {
			out.Skipped[f.Name] = err
			out.Unavailable = append(out.Unavailable, inst)
			continue
		}
		if err != nil {
			return out, err
		}
		out.Formats = append(out.Formats, inst)
	}
	return out, nil
}
