package options_test

import (
	"reflect"
	"regexp"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter/options"
)

type base struct {
	Level int    `option:"level" variant:"level" usage:"the level"`
	Mode  string `option:"mode" variant:"mode"`
	Fast  bool   `option:"fast" variant:"fast"`
	Tool  string `option:"tool" variant:"-" scope:"service"`
}

type extended struct {
	base
	Files []string `variant:"files"`
}

type untagged struct {
	Level int `option:"level"`
}

func TestVariant(t *testing.T) {
	defaults := extended{base: base{Level: 9, Mode: "a"}}
	for _, tc := range []struct {
		name string
		opts extended
		want string // a regular expression
	}{
		{"defaults qualify nothing", defaults, "fmt"},
		{"one option", extended{base: base{Level: 6, Mode: "a"}}, "fmt.level-6"},
		{"keys in order", extended{base: base{Level: -2, Mode: "b", Fast: true}}, "fmt.fast-true.level--2.mode-b"},
		{"options that never change the output are left out", extended{base: base{Level: 9, Mode: "a", Tool: "/usr/bin/x"}}, "fmt"},
		{"strings that are no plain word are hashed", extended{base: base{Level: 9, Mode: "a/b\nc"}}, `^fmt\.mode-[0-9a-f]{16}$`},
		{"lists are hashed", extended{base: base{Level: 9, Mode: "a"}, Files: []string{"x", "y"}}, `^fmt\.files-[0-9a-f]{16}$`},
		{"an empty list is the default", extended{base: base{Level: 9, Mode: "a"}, Files: []string{}}, "fmt"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := options.Variant("fmt", tc.opts, defaults)
			if tc.want[0] != '^' {
				tc.want = "^" + regexp.QuoteMeta(tc.want) + "$"
			}
			assert.Regexp(t, tc.want, got)
			assert.Equal(t, got, options.Variant("fmt", tc.opts, defaults), "stable")
		})
	}
	assert.NotEqual(t,
		options.Variant("fmt", extended{base: base{Level: 9, Mode: "a"}, Files: []string{"x", "y"}}, defaults),
		options.Variant("fmt", extended{base: base{Level: 9, Mode: "a"}, Files: []string{"y", "x"}}, defaults),
		"list order matters")
}

func TestVariantRefusesAFieldWithoutVariantTag(t *testing.T) {
	require.Error(t, options.Check(untagged{}))
	assert.Panics(t, func() { options.Variant("fmt", untagged{}, untagged{}) })
	require.NoError(t, options.Check(extended{}))
}

func TestFieldsAndSet(t *testing.T) {
	o := extended{base: base{Level: 9, Mode: "a"}}
	fields := options.Fields(o)
	require.Len(t, fields, 4, "embedded fields are flattened; fields without option are not listed")
	assert.Equal(t, options.Field{Name: "level", Usage: "the level", Kind: reflect.Int, Value: "9"}, fields[0])
	assert.True(t, fields[3].ServiceOnly)
	assert.Equal(t, "fmt_level", fields[0].ConfigKey("fmt"))
	assert.Equal(t, "fmt-level", fields[0].FlagName("fmt"))

	for _, tc := range []struct {
		name, value string
		ok          bool
	}{
		{"level", "3", true}, {"level", " 4 ", true}, {"level", "high", false}, {"fast", "true", true},
		{"fast", "maybe", false}, {"mode", "anything at all", true}, {"speed", "1", false}, {"files", "x", false},
	} {
		err := options.Set(&o, tc.name, tc.value)
		if tc.ok {
			assert.NoError(t, err, "%s=%s", tc.name, tc.value)
		} else if assert.Error(t, err, "%s=%s", tc.name, tc.value) {
			assert.True(t, errdefs.IsInvalidArgument(err))
		}
	}
	assert.Equal(t, 4, o.Level)
	assert.True(t, o.Fast)
	assert.Equal(t, "anything at all", o.Mode)
	assert.Equal(t, []string{"level", "mode", "fast", "tool"}, options.Names(o))
}
