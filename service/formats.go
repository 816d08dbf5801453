package service

import (
	"fmt"
	"slices"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/lazyconv/lazyconv/format"

	// The formats of this repository register themselves as
	// image-converter plugins (see package format).
	_ "github.com/lazyconv/lazyconv/converter/nydus"
	_ "github.com/lazyconv/lazyconv/converter/recompress"
	_ "github.com/lazyconv/lazyconv/converter/soci" // with cgo

	_ "github.com/lazyconv/lazyconv/converter/stargz"
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
	// FormatSOCI keeps the layers and adds SOCI indexes (builds with cgo).
	FormatSOCI = "soci"
	// FormatNone converts media types only (with oci).
	FormatNone = "none"
)

// Formats returns every format the build registered, at its defaults, in
// table order (the CLI's flags; a service serves those its configuration
// enables: Service.Formats).
func Formats() []format.Format { return format.Registered() }

// FormatNames lists the registered formats' names, in table order.
func FormatNames() []string {
	var names []string
	for _, f := range format.Registered() {
		names = append(names, f.Name)
	}
	return names
}

// LookupFormat returns the registered format of that name.
func LookupFormat(name string) (format.Format, error) { return format.Lookup(name) }

// ExclusiveFlagsMessage is the CLI's error when more than one format flag is given.
func ExclusiveFlagsMessage() string {
	var flags []string
	for _, f := range format.Registered() {
		if f.Flag {
			flags = append(flags, "--"+f.Name)
		}
	}
	if len(flags) < 2 {
		return strings.Join(flags, "") + " is the only format flag"
	}
	return strings.Join(flags[:len(flags)-1], ", ") + " and " + flags[len(flags)-1] + " exclude each other"
}

// ValidateOptions checks a request's options for a format against the
// format's defaults, as a client can before it connects: unknown names, bad
// values and invalid combinations are ErrInvalidArgument. Options only a
// service sets are left to the service.
func ValidateOptions(name string, requested map[string]string) error {
	f, err := format.Lookup(name)
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
	_, err = f.ResolveOptions(own)
	return err
}

// WithFormats gives the service the formats its image-converter plugins
// initialized (the plugin's, or format.Load's in-process); without it the
// service loads every registered format with its defaults.
func WithFormats(loaded format.Loaded) Option {
	return func(s *Service) { s.formats = loaded; s.formatsSet = true }
}

// Formats lists the formats the service serves, in table order.
func (s *Service) Formats() []*format.Format { return slices.Clone(s.formats.Formats) }

// format returns the format of that name the service serves: a format
// disabled_plugins removed, or whose plugin was skipped, is refused saying
// so.
func (s *Service) format(name string) (*format.Format, error) {
	for _, f := range s.formats.Formats {
		if f.Name == name {
			return f, nil
		}
	}
	if slices.Contains(s.formats.Disabled, name) {
		return nil, fmt.Errorf("format %s is disabled in this service's configuration (disabled_plugins lists %s): %w",
			name, format.URI(name), errdefs.ErrFailedPrecondition)
	}
	if reason, ok := s.formats.Skipped[name]; ok {
		return nil, fmt.Errorf("format %s cannot run here (its plugin %s was skipped: %v): %w",
			name, format.URI(name), reason, errdefs.ErrUnavailable)
	}
	if _, err := format.Lookup(name); err == nil {
		return nil, fmt.Errorf("format %s is not enabled in this service (its plugin %s did not load): %w",
			name, format.URI(name), errdefs.ErrFailedPrecondition)
	}
	var names []string
	for _, f := range s.formats.Formats {
		names = append(names, f.Name)
	}
	return nil, fmt.Errorf("unknown format %q (this service serves: %s, %s): %w",
		name, strings.Join(names, ", "), FormatNone, errdefs.ErrInvalidArgument)
}
