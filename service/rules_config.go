package service

import (
	"bytes"
	"fmt"
	"maps"
	"path"
	"slices"

	"github.com/containerd/errdefs"
	"github.com/pelletier/go-toml/v2"
)

// Rule converts images as soon as they are created or updated in containerd
// (pulled, imported, tagged, built), in the plugin's configuration:
//
//	[[plugins.'io.containerd.grpc.v1.lazyconv'.rules]]
//	  match = "registry.example.com/team/*"  # glob (path.Match) on the image name
//	  format = "estargz"                     # any format of the table
//	  tag_suffix = "-esgz"                   # app:1.0 -> app:1.0-esgz
//	  namespaces = ["default"]               # optional: every namespace when empty
//	  push = true                            # push the result (and publish the conversion)
//	  [plugins.'io.containerd.grpc.v1.lazyconv'.rules.options]
//	    compression-level = 6                # the format's options, by name
type Rule struct {
	Match      string
	Format     string
	TagSuffix  string
	Namespaces []string
	Options    map[string]string
	// Push pushes the converted image to the registry its name names
	// (localhost over plain HTTP, others over HTTPS, without credentials),
	// which publishes the conversion for other nodes.
	Push bool
}

// DefaultRuleQueueLength bounds the rule conversions waiting for their turn.
const DefaultRuleQueueLength = 100

// ruleTOML is a rule as the configuration writes it.
type ruleTOML struct {
	Match      string         `toml:"match"`
	Format     string         `toml:"format"`
	TagSuffix  string         `toml:"tag_suffix"`
	Namespaces []string       `toml:"namespaces"`
	Options    map[string]any `toml:"options"`
	Push       bool           `toml:"push"`
}

// parseRules reads the rules table as TOML decodes it, through go-toml as
// containerd decodes a plugin's section: unknown keys and wrong types are
// refused.
func parseRules(v any) ([]Rule, error) {
	b, err := toml.Marshal(map[string]any{"rules": v})
	if err != nil {
		return nil, fmt.Errorf("rules: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	var doc struct {
		Rules []ruleTOML `toml:"rules"`
	}
	if err := toml.NewDecoder(bytes.NewReader(b)).DisallowUnknownFields().Decode(&doc); err != nil {
		return nil, fmt.Errorf("rules: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	var rules []Rule
	for i, rt := range doc.Rules {
		r := Rule{Match: rt.Match, Format: rt.Format, TagSuffix: rt.TagSuffix, Namespaces: rt.Namespaces, Push: rt.Push}
		if r.Options, err = optionTexts(rt.Options); err != nil {
			return nil, fmt.Errorf("rules[%d].options: %w", i, err)
		}
		if err := r.validate(); err != nil {
			return nil, fmt.Errorf("rules[%d]: %w", i, err)
		}
		rules = append(rules, r)
	}
	return rules, nil
}

func (r Rule) validate() error {
	if r.Match == "" || r.TagSuffix == "" {
		return fmt.Errorf("a rule needs match and tag_suffix: %w", errdefs.ErrInvalidArgument)
	}
	if _, err := path.Match(r.Match, ""); err != nil {
		return fmt.Errorf("match %q: %v: %w", r.Match, err, errdefs.ErrInvalidArgument)
	}
	if r.Format == "" || r.Format == FormatNone {
		return fmt.Errorf("a rule needs a format (one of %v): %w", FormatNames(), errdefs.ErrInvalidArgument)
	}
	return ValidateOptions(r.Format, r.Options)
}

// toml is the rule as a TOML table.
func (r Rule) toml() map[string]any {
	out := map[string]any{"match": r.Match, "format": r.Format, "tag_suffix": r.TagSuffix}
	if len(r.Namespaces) > 0 {
		out["namespaces"] = slices.Clone(r.Namespaces)
	}
	if r.Push {
		out["push"] = true
	}
	if len(r.Options) > 0 {
		opts := map[string]any{}
		for _, k := range slices.Sorted(maps.Keys(r.Options)) {
			opts[k] = r.Options[k]
		}
		out["options"] = opts
	}
	return out
}

// optionTexts reads a table of options as text (numbers and booleans too).
func optionTexts(m map[string]any) (map[string]string, error) {
	if len(m) == 0 {
		return nil, nil
	}
	out := map[string]string{}
	for k, v := range m {
		switch v.(type) {
		case string, int64, int, bool:
			out[k] = fmt.Sprint(v)
		default:
			return nil, fmt.Errorf("option %s takes a string, number or boolean, not %v: %w", k, v, errdefs.ErrInvalidArgument)
		}
	}
	return out, nil
}
