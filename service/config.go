package service

import (
	"fmt"
	"maps"
	"runtime"
	"slices"
	"time"

	"github.com/containerd/errdefs"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/format"
	"github.com/lazyconv/lazyconv/remote"
	"github.com/lazyconv/lazyconv/rules"
)

// Config is the conversion service's configuration: the plugin's section of
// containerd's config.toml ([plugins.'io.containerd.grpc.v1.lazyconv']) and
// the [converter] section of lazyconvd's config. In TOML it is one flat
// table (workers, default_format, limits, rules, ...); ParseConfig reads it.
// Format options are not here: each format's are in its image-converter
// plugin's section ([plugins.'io.containerd.image-converter.v1.estargz']
// compression_level = 5, see package format).
type Config struct {
	// Workers bounds the layers converted at once (0: GOMAXPROCS).
	Workers int
	// DefaultFormat is the layer format of requests that name none.
	DefaultFormat string
	// RequireLossless refuses layers that cannot be converted byte for byte
	// (sparse files) in every request.
	RequireLossless bool
	// DisableRegistryCache converts every image here, without first
	// asking the source's registry for a conversion another node published.
	DisableRegistryCache bool
	// TrustedPublishers are the repositories ("host/repository" patterns,
	// see remote.Publishers) whose published conversions are adopted
	// without reading their layers. Any other repository's conversion is
	// adopted only once each of its layers is fetched and checked against
	// its source. Empty by default.
	TrustedPublishers []string
	// Limits bound what a layer may make a conversion hold (zero fields:
	// converter.DefaultLimits; negative: none).
	Limits converter.Limits
	// Rules convert matching images as soon as containerd creates or updates
	// them, or a registry notifies a push (see rules.Rule).
	Rules []rules.Rule
	// RuleQueueLength bounds the rule conversions waiting; a trigger the
	// full queue cannot take is counted and dropped, and reconcile queues
	// it again.
	RuleQueueLength int
	// RuleRetries is how many times a rule conversion that failed
	// transiently (registry unavailable, network) is tried again, with a
	// backoff from RuleRetryBackoff doubling each time.
	RuleRetries      int
	RuleRetryBackoff time.Duration
	// ReconcileInterval is the time between reconciles, which queue every
	// image a rule matches that has no current output.
	ReconcileInterval time.Duration
	// Notifications receives registries' push notifications (off when its
	// Address is empty).
	Notifications NotificationsConfig
}

// legacyFormatKeys are the keys format options had in this table before
// each format became a plugin ("estargz_compression_level"), with where each
// is now: ParseConfig refuses them naming the new place.
func legacyFormatKeys() map[string]string {
	out := map[string]string{}
	for _, f := range format.Registered() {
		if f.OptionPrefix == "" {
			continue
		}
		for _, fld := range f.Options() {
			k := fld.ConfigKey(f.OptionPrefix)
			place := fmt.Sprintf("%s in [plugins.'%s']", format.ConfigKey(fld.Name), format.URI(f.Name))
			if prev, ok := out[k]; ok {
				place = prev + " (and " + place + ")"
			}
			out[k] = place
		}
	}
	return out
}

// DefaultConfig is the configuration with every option at its default.
func DefaultConfig() Config {
	cfg := Config{DefaultFormat: FormatEStargz, Limits: converter.DefaultLimits(), RuleQueueLength: rules.DefaultQueueLength,
		RuleRetries: rules.DefaultRetries, RuleRetryBackoff: rules.DefaultRetryBackoff, ReconcileInterval: rules.DefaultReconcileInterval,
		Notifications: defaultNotifications()}
	return cfg
}

// ParseConfig reads a configuration table as TOML decodes it (values are
// int64, string or bool) over the defaults. An unknown key or a value of the
// wrong kind is ErrInvalidArgument, so that a typo does not go unnoticed.
func ParseConfig(raw map[string]any) (Config, error) {
	cfg := DefaultConfig()
	for _, k := range slices.Sorted(maps.Keys(raw)) {
		v := raw[k]
		switch k {
		case "workers":
			n, ok := asInt(v)
			if !ok {
				return cfg, fmt.Errorf("workers takes a whole number, not %v: %w", v, errdefs.ErrInvalidArgument)
			}
			cfg.Workers = n
		case "rules":
			list, err := rules.Parse(v, checkRuleFormat)
			if err != nil {
				return cfg, err
			}
			cfg.Rules = list
		case "rule_retries":
			n, err := atLeast(k, v, 0)
			if err != nil {
				return cfg, err
			}
			cfg.RuleRetries = n
		case "rule_retry_backoff", "reconcile_interval":
			d, err := duration(k, v)
			if err != nil {
				return cfg, err
			}
			if k == "rule_retry_backoff" {
				cfg.RuleRetryBackoff = d
			} else {
				cfg.ReconcileInterval = d
			}
		case "notifications":
			n, err := parseNotifications(v)
			if err != nil {
				return cfg, err
			}
			cfg.Notifications = n
		case "rule_queue_length":
			n, err := atLeast(k, v, 1)
			if err != nil {
				return cfg, err
			}
			cfg.RuleQueueLength = n
		case "require_lossless", "disable_registry_cache":
			b, ok := v.(bool)
			if !ok {
				return cfg, fmt.Errorf("%s takes true or false, not %v: %w", k, v, errdefs.ErrInvalidArgument)
			}
			if k == "require_lossless" {
				cfg.RequireLossless = b
			} else {
				cfg.DisableRegistryCache = b
			}
		case "trusted_publishers":
			list, ok := stringList(v)
			if !ok {
				return cfg, fmt.Errorf("trusted_publishers takes a list of strings, not %v: %w", v, errdefs.ErrInvalidArgument)
			}
			cfg.TrustedPublishers = list
		case "default_format":
			s, ok := v.(string)
			if !ok {
				return cfg, fmt.Errorf("default_format takes a string, not %v: %w", v, errdefs.ErrInvalidArgument)
			}
			cfg.DefaultFormat = s
		default:
			if limit, ok := limitFields(&cfg.Limits)[k]; ok {
				n, ok := v.(int64)
				if !ok {
					return cfg, fmt.Errorf("%s takes a whole number, not %v: %w", k, v, errdefs.ErrInvalidArgument)
				}
				*limit = n
				continue
			}
			if place, moved := legacyFormatKeys()[k]; moved {
				return cfg, fmt.Errorf("configuration key %q has moved: format options are in their format's plugin section; set %s: %w",
					k, place, errdefs.ErrInvalidArgument)
			}
			return cfg, fmt.Errorf("unknown configuration key %q (known: workers, default_format, require_lossless, disable_registry_cache, trusted_publishers, max_*, rules, rule_queue_length, rule_retries, rule_retry_backoff, reconcile_interval, notifications): %w",
				k, errdefs.ErrInvalidArgument)
		}
	}
	return cfg, cfg.validate()
}

// TOML is the configuration as a TOML table, typed as TOML decodes it: what
// ParseConfig reads back, and what containerd's `config dump` prints.
func (c Config) TOML() map[string]any {
	out := map[string]any{"workers": int64(c.Workers), "default_format": c.DefaultFormat, "require_lossless": c.RequireLossless,
		"disable_registry_cache": c.DisableRegistryCache, "rule_queue_length": int64(c.RuleQueueLength),
		"rule_retries": int64(c.RuleRetries), "rule_retry_backoff": c.RuleRetryBackoff.String(),
		"reconcile_interval": c.ReconcileInterval.String(), "notifications": c.Notifications.toml()}
	if len(c.TrustedPublishers) > 0 {
		var list []any
		for _, p := range c.TrustedPublishers {
			list = append(list, p)
		}
		out["trusted_publishers"] = list
	}
	if len(c.Rules) > 0 {
		var list []any
		for _, r := range c.Rules {
			list = append(list, r.TOML())
		}
		out["rules"] = list
	}
	limits := c.Limits.WithDefaults()
	for k, v := range limitFields(&limits) {
		out[k] = *v
	}
	return out
}

// limitFields are the configuration keys of the limits.
func limitFields(l *converter.Limits) map[string]*int64 {
	return map[string]*int64{
		"max_entries": &l.MaxEntries, "max_trailing_bytes": &l.MaxTrailingBytes,
		"max_expanded_bytes": &l.MaxExpandedBytes, "max_toc_bytes": &l.MaxTOCBytes,
		"max_zstd_window": &l.MaxZstdWindow, "max_document_bytes": &l.MaxDocumentBytes, "max_index_depth": &l.MaxIndexDepth,
	}
}

// stringList reads a TOML array of strings.
func stringList(v any) ([]string, bool) {
	switch l := v.(type) {
	case []string:
		return l, true
	case []any:
		out := make([]string, 0, len(l))
		for _, e := range l {
			s, ok := e.(string)
			if !ok {
				return nil, false
			}
			out = append(out, s)
		}
		return out, true
	}
	return nil, false
}

// atLeast reads a whole number of at least min.
func atLeast(key string, v any, min int) (int, error) {
	n, ok := asInt(v)
	if !ok || n < min {
		return 0, fmt.Errorf("%s takes a whole number of at least %d, not %v: %w", key, min, v, errdefs.ErrInvalidArgument)
	}
	return n, nil
}

func asInt(v any) (int, bool) {
	switch n := v.(type) {
	case int64:
		return int(n), true
	case int:
		return n, true
	}
	return 0, false
}

// validate checks the configuration, with ErrInvalidArgument on a bad
// value. It checks every format's options but probes for no builder.
func (c Config) validate() error {
	if err := rules.Validate(c.Rules, checkRuleFormat); err != nil {
		return err
	}
	if err := c.Notifications.validate(); err != nil {
		return err
	}
	if err := remote.Publishers(c.TrustedPublishers).Validate(); err != nil {
		return err
	}
	if c.Workers < 0 {
		return fmt.Errorf("workers must not be negative, got %d: %w", c.Workers, errdefs.ErrInvalidArgument)
	}
	if _, err := LookupFormat(c.DefaultFormat); err != nil || c.DefaultFormat == FormatNone {
		return fmt.Errorf("default_format %q is none of %v: %w", c.DefaultFormat, FormatNames(), errdefs.ErrInvalidArgument)
	}
	return nil
}

// RulesEngine is the rules engine's configuration.
func (c Config) RulesEngine() rules.Config {
	workers := c.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	return rules.Config{Rules: c.Rules, QueueLength: c.RuleQueueLength, Workers: workers, Retries: c.RuleRetries,
		RetryBackoff: c.RuleRetryBackoff, ReconcileInterval: c.ReconcileInterval}
}

// checkRuleFormat checks a rule's format and options against the table.
func checkRuleFormat(format string, options map[string]string) error {
	if format == "" || format == FormatNone {
		return fmt.Errorf("a rule needs a format (one of %v): %w", FormatNames(), errdefs.ErrInvalidArgument)
	}
	return ValidateOptions(format, options)
}

// duration reads a duration written as text ("10m", "30s").
func duration(key string, v any) (time.Duration, error) {
	text, ok := v.(string)
	d, err := time.ParseDuration(text)
	if !ok || err != nil || d <= 0 {
		return 0, fmt.Errorf("%s takes a positive duration such as \"30s\" or \"10m\", not %v: %w", key, v, errdefs.ErrInvalidArgument)
	}
	return d, nil
}
