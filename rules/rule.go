package rules

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/pelletier/go-toml/v2"
)

// Rule converts images as soon as they are created or updated in containerd
// (pulled, imported, tagged, built) or pushed to a registry that notifies
// this node, in the plugin's configuration:
//
//	[[plugins.'io.containerd.grpc.v1.lazyconv'.rules]]
//	  match = "registry.example.com/team/*"  # glob (path.Match) on the image name
//	  format = "estargz"                     # any format of the table
//	  tag_suffix = "-esgz"                   # app:1.0 -> app:1.0-esgz
//	  namespaces = ["default"]               # optional: every namespace when empty
//	  push = true                            # push the result (and publish the conversion)
//	  platforms = ["linux/amd64"]            # optional: every platform the source has when empty
//	  prune_outputs = true                   # delete the output when its source is deleted
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
	// which publishes the conversion for other nodes. Registry
	// notifications trigger only rules that push.
	Push bool
	// Platforms are the platforms converted ("os/arch[/variant]"); empty:
	// every platform the source lists, fetching what is not local from its
	// registry as a lazy pull would.
	Platforms []string
	// PruneOutputs deletes the rule's output image when its source image
	// is deleted.
	PruneOutputs bool
}

// Output is the name of the image the rule makes of source.
func (r Rule) Output(source string) string { return source + r.TagSuffix }

// Applies says whether the rule converts the image named name in namespace.
func (r Rule) Applies(namespace, name string) bool {
	if len(r.Namespaces) > 0 && !slices.Contains(r.Namespaces, namespace) {
		return false
	}
	ok, _ := path.Match(r.Match, name)
	return ok
}

// Spec is a digest of what makes the rule's output what it is: its format,
// options and platforms (labels.RuleSpec).
func (r Rule) Spec() string {
	h := sha256.New()
	fmt.Fprintf(h, "%q", r.Format)
	for _, k := range slices.Sorted(maps.Keys(r.Options)) {
		fmt.Fprintf(h, " %q=%q", k, r.Options[k])
	}
	ps := slices.Clone(r.Platforms)
	slices.Sort(ps)
	fmt.Fprintf(h, " %q", ps)
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// ruleTOML is a rule as the configuration writes it.
type ruleTOML struct {
	Match        string         `toml:"match"`
	Format       string         `toml:"format"`
	TagSuffix    string         `toml:"tag_suffix"`
	Namespaces   []string       `toml:"namespaces"`
	Options      map[string]any `toml:"options"`
	Push         bool           `toml:"push"`
	Platforms    []string       `toml:"platforms"`
	PruneOutputs bool           `toml:"prune_outputs"`
}

// Parse reads the rules table as TOML decodes it, through go-toml as
// containerd decodes a plugin's section: unknown keys and wrong types are
// refused. checkFormat checks a rule's format and options (the service's
// table of formats).
func Parse(v any, checkFormat func(format string, options map[string]string) error) ([]Rule, error) {
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
		r := Rule{Match: rt.Match, Format: rt.Format, TagSuffix: rt.TagSuffix, Namespaces: rt.Namespaces, Push: rt.Push,
			Platforms: rt.Platforms, PruneOutputs: rt.PruneOutputs}
		if r.Options, err = optionTexts(rt.Options); err != nil {
			return nil, fmt.Errorf("rules[%d].options: %w", i, err)
		}
		rules = append(rules, r)
	}
	return rules, Validate(rules, checkFormat)
}

// Validate checks rules: each has a match, a tag suffix, a format
// checkFormat accepts, platforms that parse; and no tag suffix ends with
// another (the suffix names a rule's outputs, which must be one image's).
func Validate(rules []Rule, checkFormat func(format string, options map[string]string) error) error {
	seen := map[string]bool{}
	for i, r := range rules {
		if err := r.validate(checkFormat); err != nil {
			return fmt.Errorf("rules[%d]: %w", i, err)
		}
		for other := range seen {
			if strings.HasSuffix(other, r.TagSuffix) || strings.HasSuffix(r.TagSuffix, other) {
				// app:v1-opt by "-esgz" and app:v1 by "-opt-esgz" would both make app:v1-opt-esgz
				return fmt.Errorf("rules[%d]: tag_suffix %q and another rule's %q: one ends with the other, so two images could have one output: %w",
					i, r.TagSuffix, other, errdefs.ErrInvalidArgument)
			}
		}
		seen[r.TagSuffix] = true
	}
	return nil
}

func (r Rule) validate(checkFormat func(format string, options map[string]string) error) error {
	if r.Match == "" || r.TagSuffix == "" {
		return fmt.Errorf("a rule needs match and tag_suffix: %w", errdefs.ErrInvalidArgument)
	}
	if strings.ContainsAny(r.TagSuffix, "/@:") {
		return fmt.Errorf("tag_suffix %q may not hold '/', ':' or '@': %w", r.TagSuffix, errdefs.ErrInvalidArgument)
	}
	if _, err := path.Match(r.Match, ""); err != nil {
		return fmt.Errorf("match %q: %v: %w", r.Match, err, errdefs.ErrInvalidArgument)
	}
	if _, err := platforms.ParseAll(r.Platforms); err != nil {
		return fmt.Errorf("platforms: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if checkFormat != nil {
		return checkFormat(r.Format, r.Options)
	}
	return nil
}

// TOML is the rule as a TOML table.
func (r Rule) TOML() map[string]any {
	out := map[string]any{"match": r.Match, "format": r.Format, "tag_suffix": r.TagSuffix}
	if len(r.Namespaces) > 0 {
		out["namespaces"] = slices.Clone(r.Namespaces)
	}
	if r.Push {
		out["push"] = true
	}
	if len(r.Platforms) > 0 {
		out["platforms"] = slices.Clone(r.Platforms)
	}
	if r.PruneOutputs {
		out["prune_outputs"] = true
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
