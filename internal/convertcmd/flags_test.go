package convertcmd_test

import (
	"reflect"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/urfave/cli/v3"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/internal/convertcmd"
)

// Every field of converter.Limits is a --max-* flag, with its default.
func TestEveryLimitIsAFlag(t *testing.T) {
	var l converter.Limits
	set := map[uintptr]string{}
	for _, f := range convertcmd.LimitsOf(&l) {
		set[reflect.ValueOf(f.Value).Pointer()] = f.Name
	}
	v := reflect.ValueOf(&l).Elem()
	for i := range v.NumField() {
		assert.Contains(t, set, v.Field(i).Addr().Pointer(), "converter.Limits.%s has no flag", v.Type().Field(i).Name)
	}
	defaults := map[string]int64{}
	for _, f := range convertcmd.LimitFlags() {
		defaults[f.Names()[0]] = f.(*cli.Int64Flag).Value
	}
	for name, want := range map[string]int64{"max-zstd-window": 1 << 27, "max-document-bytes": 4 * 1048 * 1048, "max-index-depth": 4} {
		assert.Equal(t, want, defaults[name], name)
	}
}
