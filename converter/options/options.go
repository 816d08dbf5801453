// Package options reads a format's options from the one Go struct that holds
// them. Tags on the struct's fields say everything lazyconv needs to know of
// an option, so that a new option is one new field:
//
//		CompressionLevel int `option:"compression-level" variant:"level" usage:"gzip level (-2..9)"`
//
//	  - option names it for requests, CLI flags ("--<format>-<name>") and the
//	    configuration ("<format>_<name with underscores>"); fields without it are
//	    set by code only (a record's file list, say);
//	  - variant names it in the variant key, the label the converted-layer cache
//	    is found by, or is "-" for an option that never changes the output.
//	    Every field needs one: Variant panics on a field without, and the
//	    conformance suite fails, so an option cannot be left out of the key;
//	  - usage is the CLI flag's help;
//	  - scope:"service" marks an option only the service's configuration sets
//	    (a program the service runs, say): a request may repeat it, not change it.
//
// Embedded structs are flattened, so a format can extend another's options.
package options

import (
	"fmt"
	"maps"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// Field describes one named option of a format.
type Field struct {
	// Name is the option's name ("compression-level").
	Name string
	// Usage is its CLI help.
	Usage string
	// Kind is reflect.Int, reflect.String or reflect.Bool.
	Kind reflect.Kind
	// Value is its value in the struct Fields was given, as text.
	Value string
	// ServiceOnly: only the service's configuration may set it.
	ServiceOnly bool
}

// ConfigKey is the option's key in a configuration section: the format's
// prefix, "_", and the name with dashes as underscores
// ("estargz_compression_level").
func (f Field) ConfigKey(prefix string) string {
	return prefix + "_" + strings.ReplaceAll(f.Name, "-", "_")
}

// FlagName is the option's CLI flag name ("estargz-compression-level").
func (f Field) FlagName(prefix string) string { return prefix + "-" + f.Name }

type field struct {
	name, variant, usage string
	service              bool
	index                []int
}

// fields lists every exported field of t (a struct type), embedded ones flattened.
func fields(t reflect.Type) []field {
	var out []field
	for _, sf := range reflect.VisibleFields(t) {
		if !sf.IsExported() || (sf.Anonymous && sf.Type.Kind() == reflect.Struct) {
			continue
		}
		out = append(out, field{
			name: sf.Tag.Get("option"), variant: sf.Tag.Get("variant"), usage: sf.Tag.Get("usage"),
			service: sf.Tag.Get("scope") == "service", index: sf.Index,
		})
	}
	return out
}

func structOf(opts any) reflect.Value {
	v := reflect.ValueOf(opts)
	for v.Kind() == reflect.Pointer {
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		panic(fmt.Sprintf("options: %T is not a struct", opts))
	}
	return v
}

// Fields lists the named options of opts (a struct or a pointer to one),
// with their values in it.
func Fields(opts any) []Field {
	v := structOf(opts)
	var out []Field
	for _, f := range fields(v.Type()) {
		if f.name == "" {
			continue
		}
		fv := v.FieldByIndex(f.index)
		out = append(out, Field{Name: f.name, Usage: f.usage, Kind: fv.Kind(), Value: text(fv), ServiceOnly: f.service})
	}
	return out
}

func text(v reflect.Value) string {
	switch v.Kind() {
	case reflect.Int, reflect.Int32, reflect.Int64:
		return strconv.FormatInt(v.Int(), 10)
	case reflect.Bool:
		return strconv.FormatBool(v.Bool())
	case reflect.String:
		return v.String()
	default:
		panic(fmt.Sprintf("options: a named option cannot be of kind %s", v.Kind()))
	}
}

// Set sets the option called name in opts (a pointer to a struct) from text.
// An unknown name or a value of the wrong kind is ErrInvalidArgument.
func Set(opts any, name, value string) error {
	v := structOf(opts)
	if !v.CanSet() {
		panic(fmt.Sprintf("options: Set needs a pointer, got %T", opts))
	}
	for _, f := range fields(v.Type()) {
		if f.name != name {
			continue
		}
		fv := v.FieldByIndex(f.index)
		switch fv.Kind() {
		case reflect.Int, reflect.Int32, reflect.Int64:
			n, err := strconv.ParseInt(strings.TrimSpace(value), 10, 64)
			if err != nil || fv.OverflowInt(n) {
				return fmt.Errorf("option %s takes a whole number, not %q: %w", name, value, errdefs.ErrInvalidArgument)
			}
			fv.SetInt(n)
		case reflect.Bool:
			b, err := strconv.ParseBool(strings.TrimSpace(value))
			if err != nil {
				return fmt.Errorf("option %s takes true or false, not %q: %w", name, value, errdefs.ErrInvalidArgument)
			}
			fv.SetBool(b)
		case reflect.String:
			fv.SetString(value)
		default:
			panic(fmt.Sprintf("options: option %s is of kind %s", name, fv.Kind()))
		}
		return nil
	}
	return fmt.Errorf("unknown option %q (known: %s): %w", name, strings.Join(Names(opts), ", "), errdefs.ErrInvalidArgument)
}

// DependentDefaults is implemented by options where one option's default
// follows another's value (eStargz's level follows its deflate): after the
// configured and requested values are set, the service calls
// FollowDefaults with whether each option was set, and the options fill in
// the defaults of those left unset.
type DependentDefaults interface {
	// Dependent names the options whose defaults follow others' (a
	// configuration does not fill them in with a fixed default).
	Dependent() []string
	// FollowDefaults fills in the dependent options that were not set.
	FollowDefaults(set func(name string) bool)
}

// Names lists the option names of opts, in field order.
func Names(opts any) []string {
	var out []string
	for _, f := range Fields(opts) {
		out = append(out, f.Name)
	}
	return out
}

// Check reports a field of opts that has no variant tag: every field must
// say how it enters the variant key ("-" when it never changes the output).
func Check(opts any) error {
	v := structOf(opts)
	for _, f := range fields(v.Type()) {
		if f.variant == "" {
			return fmt.Errorf("option field %s of %s has no variant tag (use variant:\"-\" if it never changes the output)",
				v.Type().FieldByIndex(f.index).Name, v.Type())
		}
	}
	return nil
}

// Variant is the variant key of a format with opts: the format's name, then
// every option whose variant tag is not "-" and whose value differs from
// defaults, as ".key-value", in key order ("estargz.chunk-1024.level-6"). The
// same options give the same key on every machine. Short values made of
// letters, digits, '_' and '-' are written as they are; other strings and
// lists as the first 16 hex digits of their SHA-256 (lists joined by
// newlines). It panics on a field without a variant tag (see Check).
func Variant(format string, opts, defaults any) string {
	if err := Check(opts); err != nil {
		panic("options: " + err.Error())
	}
	v, d := structOf(opts), structOf(defaults)
	if v.Type() != d.Type() {
		panic(fmt.Sprintf("options: defaults are %s, not %s", d.Type(), v.Type()))
	}
	keys := map[string]string{}
	for _, f := range fields(v.Type()) {
		fv := v.FieldByIndex(f.index)
		if f.variant == "-" || same(fv, d.FieldByIndex(f.index)) {
			continue
		}
		keys[f.variant] = variantValue(fv)
	}
	var b strings.Builder
	b.WriteString(format)
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		fmt.Fprintf(&b, ".%s-%s", k, keys[k])
	}
	return b.String()
}

// same compares an option with its default; a nil and an empty list are the same.
func same(a, b reflect.Value) bool {
	if a.Kind() == reflect.Slice && a.Len() == 0 && b.Len() == 0 {
		return true
	}
	return reflect.DeepEqual(a.Interface(), b.Interface())
}

var literal = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)

func variantValue(v reflect.Value) string {
	switch v.Kind() {
	case reflect.Slice:
		if v.Type().Elem().Kind() != reflect.String {
			panic(fmt.Sprintf("options: a variant cannot hold a list of %s", v.Type().Elem()))
		}
		return short(strings.Join(v.Interface().([]string), "\n"))
	case reflect.String:
		if literal.MatchString(v.String()) {
			return v.String()
		}
		return short(v.String())
	default:
		return text(v)
	}
}

func short(s string) string { return digest.FromString(s).Encoded()[:16] }
