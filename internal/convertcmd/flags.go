// Package convertcmd is the command line of lazyconv's conversions, shared
// by the lazyconv CLI and lazyconv's ctr: the format and option flags, made
// from the service's format table; the limit flags of the embedded store;
// and the live progress display and summary of a conversion.
package convertcmd

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strconv"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/urfave/cli/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/format"
	"github.com/lazyconv/lazyconv/service"
)

// The format flags of `image convert` and `image optimize` are made from the
// service's format table: --<format> for each format with a flag, and
// --<prefix>-<option> for each of its options, with the option's default and
// help. A new option or format needs no change here.

// FormatFlags are --<format> and every option flag of the formats with a
// flag, but those named in others (which the command has already).
func FormatFlags(others ...string) []cli.Flag {
	var flags []cli.Flag
	prefixes := map[string]bool{}
	for _, f := range service.Formats() {
		if !f.Flag || slices.Contains(others, f.Name) {
			continue
		}
		flags = append(flags, &cli.BoolFlag{Name: f.Name, Usage: f.Usage})
		if f.OptionPrefix != "" && !prefixes[f.OptionPrefix] {
			prefixes[f.OptionPrefix] = true
			flags = append(flags, OptionFlags(f)...)
		}
	}
	return flags
}

// OptionFlags are the flags of one format's options.
func OptionFlags(f format.Format) []cli.Flag {
	var flags []cli.Flag
	for _, o := range f.Options() {
		name := o.FlagName(f.OptionPrefix)
		switch o.Kind {
		case reflect.Int, reflect.Int32, reflect.Int64:
			n, _ := strconv.Atoi(o.Value)
			flags = append(flags, &cli.IntFlag{Name: name, Usage: o.Usage, Value: n})
		case reflect.Bool:
			b, _ := strconv.ParseBool(o.Value)
			flags = append(flags, &cli.BoolFlag{Name: name, Usage: o.Usage, Value: b})
		default:
			flags = append(flags, &cli.StringFlag{Name: name, Usage: o.Usage, Value: o.Value})
		}
	}
	return flags
}

// ChosenFormat is the format whose flag is set (FormatNone when none is).
// Formats named in others are not lazyconv's in this command (ctr's own
// --uncompress, say).
func ChosenFormat(cmd *cli.Command, others ...string) (format.Format, error) {
	var chosen []format.Format
	for _, f := range service.Formats() {
		if f.Flag && !slices.Contains(others, f.Name) && cmd.Bool(f.Name) {
			chosen = append(chosen, f)
		}
	}
	switch len(chosen) {
	case 0:
		return format.Format{Name: service.FormatNone}, nil
	case 1:
		return chosen[0], nil
	default:
		return format.Format{}, fmt.Errorf("%s: %w", service.ExclusiveFlagsMessage(), errdefs.ErrInvalidArgument)
	}
}

// FlagOptions are the format's options the user set on the command line, by
// option name, checked against the format (service-only options aside, which
// only the service that runs them judges).
func FlagOptions(cmd *cli.Command, f format.Format) (map[string]string, error) {
	out := map[string]string{}
	for _, o := range f.Options() {
		name := o.FlagName(f.OptionPrefix)
		if !cmd.IsSet(name) {
			continue
		}
		switch o.Kind {
		case reflect.Int, reflect.Int32, reflect.Int64:
			out[o.Name] = strconv.Itoa(cmd.Int(name))
		case reflect.Bool:
			out[o.Name] = strconv.FormatBool(cmd.Bool(name))
		default:
			out[o.Name] = cmd.String(name)
		}
	}
	if err := service.ValidateOptions(f.Name, out); err != nil {
		return nil, err
	}
	return out, nil
}

// EmbeddedConfig is the service configuration of embedded mode, and the
// option giving it its formats: the CLI is the service, so it loads the
// format plugins in-process (format.Load), and options only a service sets
// (the nydus builder) are the user's flags, in their format's section.
func EmbeddedConfig(cmd *cli.Command) (service.Config, service.Option, error) {
	cfg := service.DefaultConfig()
	root := cmd.Root()
	for _, l := range LimitsOf(&cfg.Limits) {
		if root.IsSet(l.Name) {
			*l.Value = root.Int64(l.Name)
		}
	}
	if root.IsSet("trusted-publisher") {
		cfg.TrustedPublishers = root.StringSlice("trusted-publisher")
	}
	sections := map[string]format.Config{}
	for _, f := range service.Formats() {
		for _, o := range f.Options() {
			if o.ServiceOnly && cmd.IsSet(o.FlagName(f.OptionPrefix)) {
				if sections[f.Name] == nil {
					sections[f.Name] = format.Config{}
				}
				sections[f.Name][format.ConfigKey(o.Name)] = cmd.String(o.FlagName(f.OptionPrefix))
			}
		}
	}
	loaded, err := format.Load(context.Background(), sections, nil)
	if err != nil {
		return cfg, nil, err
	}
	return cfg, service.WithFormats(loaded), nil
}

// LimitFlag is one limit as a CLI flag.
type LimitFlag struct {
	// Name is the flag's name; Usage ends its help.
	Name, Usage string
	// Value is the limit the flag sets.
	Value *int64
}

// LimitsOf are the conversion LimitsOf as CLI flags (the daemon's are its
// configuration's max_* keys).
func LimitsOf(l *converter.Limits) []LimitFlag {
	return []LimitFlag{
		{"max-entries", "tar entries per layer", &l.MaxEntries},
		{"max-trailing-bytes", "bytes after a tar's end-of-archive marker", &l.MaxTrailingBytes},
		{"max-expanded-bytes", "logical bytes of a layer's sparse files once expanded", &l.MaxExpandedBytes},
		{"max-toc-bytes", "bytes of a table of contents read from a layer", &l.MaxTOCBytes},
		{"max-zstd-window", "bytes of window declared by a zstd frame of a layer (the history its decoder holds)", &l.MaxZstdWindow},
		{"max-document-bytes", "bytes of an index, manifest or config", &l.MaxDocumentBytes},
		{"max-index-depth", "levels of image indexes nested in one another", &l.MaxIndexDepth},
	}
}

// LimitFlags are the limit flags, with their defaults. They set the embedded
// service's LimitsOf; a daemon enforces its own configuration.
func LimitFlags() []cli.Flag {
	defaults := converter.DefaultLimits()
	var flags []cli.Flag
	for _, l := range LimitsOf(&defaults) {
		flags = append(flags, &cli.Int64Flag{Name: l.Name, Value: *l.Value,
			Usage: "embedded mode: refuse input beyond this many " + l.Usage + " (-1: no limit; a daemon uses its max_* configuration)"})
	}
	return flags
}

// RequireLosslessFlag refuses layers that cannot be converted byte for byte.
var RequireLosslessFlag = &cli.BoolFlag{Name: "require-lossless",
	Usage: "refuse layers that cannot be converted byte for byte (sparse files) instead of rewriting those entries"}

// NoRegistryCacheFlag converts here without asking the source's registry
// for a conversion another node published.
var NoRegistryCacheFlag = &cli.BoolFlag{Name: "no-registry-cache",
	Usage: "convert here, without adopting a conversion another node published in the source's registry"}

// OverwriteFlag lets a conversion replace a target image that exists and
// that lazyconv did not make (one it made is always converted onto).
var OverwriteFlag = &cli.BoolFlag{Name: "overwrite",
	Usage: "replace DST even if it exists and lazyconv did not make it, or convert SRC in place when DST is SRC (an image lazyconv made is always replaced)"}

// NativeError turns a conversion service's gRPC error into an errdefs one;
// a server with no lazyconv API (Unimplemented) becomes ErrNotImplemented
// with unserved as the message.
func NativeError(err error, unserved string) error {
	if err == nil {
		return nil
	}
	if status.Code(err) == codes.Unimplemented {
		return fmt.Errorf("%s: %w", unserved, errdefs.ErrNotImplemented)
	}
	return errgrpc.ToNative(err)
}
