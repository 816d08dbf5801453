package service

import (
	"fmt"
	"maps"
	"path"
	"slices"

	"github.com/containerd/errdefs"
)

// Rule converts images as soon as they are created or updated in containerd
// (pulled, imported, tagged, built), in the plugin's configuration:
//
//	[[plugins.'io.containerd.grpc.v1.lazyconv'.rules]]
//	  match = "registry.example.com/team/*"  # glob (path.Match) on the image name
//	  format = "estargz"                     # any format of the table
//	  tag_suffix = "-esgz"                   # app:1.0 -> app:1.0-esgz
//	  namespaces = ["default"]               # optional: every namespace when empty
//	  [plugins.'io.containerd.grpc.v1.lazyconv'.rules.options]
//	    compression-level = 6                # the format's options, by name
type Rule struct {
	Match      string
	Format     string
	TagSuffix  string
	Namespaces []string
	Options    map[string]string
}

// DefaultRuleQueueLength bounds the rule conversions waiting for their turn.
const DefaultRuleQueueLength = 100

// parseRules reads the rules table as TOML decodes it.
func parseRules(v any) ([]Rule, error) {
	list, ok := v.([]any)
	if !ok {
		if maps, ok := v.([]map[string]any); ok {
			for _, m := range maps {
				list = append(list, m)
			}
		} else {
			return nil, fmt.Errorf("rules must be a list of tables, not %T: %w", v, errdefs.ErrInvalidArgument)
		}
	}
	var rules []Rule
	for i, item := range list {
		m, ok := item.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("rules[%d] must be a table: %w", i, errdefs.ErrInvalidArgument)
		}
		r := Rule{}
		for k, v := range m {
			var err error
			switch k {
			case "match":
				r.Match, err = str(v)
			case "format":
				r.Format, err = str(v)
			case "tag_suffix":
				r.TagSuffix, err = str(v)
			case "namespaces":
				r.Namespaces, err = strs(v)
			case "options":
				r.Options, err = optionTexts(v)
			default:
				err = fmt.Errorf("unknown key (known: match, format, tag_suffix, namespaces, options): %w", errdefs.ErrInvalidArgument)
			}
			if err != nil {
				return nil, fmt.Errorf("rules[%d].%s: %w", i, k, err)
			}
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
	if len(r.Options) > 0 {
		opts := map[string]any{}
		for _, k := range slices.Sorted(maps.Keys(r.Options)) {
			opts[k] = r.Options[k]
		}
		out["options"] = opts
	}
	return out
}

func str(v any) (string, error) {
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("takes a string, not %v: %w", v, errdefs.ErrInvalidArgument)
	}
	return s, nil
}

func strs(v any) ([]string, error) {
	list, ok := v.([]any)
	if !ok {
		if ss, ok := v.([]string); ok {
			return ss, nil
		}
		return nil, fmt.Errorf("takes a list of strings, not %v: %w", v, errdefs.ErrInvalidArgument)
	}
	out := make([]string, 0, len(list))
	for _, item := range list {
		s, err := str(item)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// optionTexts reads a table of options as text (numbers and booleans too).
func optionTexts(v any) (map[string]string, error) {
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("takes a table of options, not %v: %w", v, errdefs.ErrInvalidArgument)
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
