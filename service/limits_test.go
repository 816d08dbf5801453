package service_test

import (
	"testing"

	"github.com/containerd/errdefs"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/service"
)

// Every limit is a max_* key, defaulted, read as set, -1 for none, and
// written back by TOML().
func TestConfigLimitKeys(t *testing.T) {
	for _, tc := range []struct {
		key   string
		field func(*converter.Limits) *int64
		def   int64
	}{
		{"max_entries", func(l *converter.Limits) *int64 { return &l.MaxEntries }, converter.DefaultMaxEntries},
		{"max_trailing_bytes", func(l *converter.Limits) *int64 { return &l.MaxTrailingBytes }, converter.DefaultMaxTrailingBytes},
		{"max_expanded_bytes", func(l *converter.Limits) *int64 { return &l.MaxExpandedBytes }, converter.DefaultMaxExpandedBytes},
		{"max_toc_bytes", func(l *converter.Limits) *int64 { return &l.MaxTOCBytes }, converter.DefaultMaxTOCBytes},
		{"max_zstd_window", func(l *converter.Limits) *int64 { return &l.MaxZstdWindow }, 128 << 20},
		{"max_document_bytes", func(l *converter.Limits) *int64 { return &l.MaxDocumentBytes }, 4 * 1048 * 1048},
		{"max_index_depth", func(l *converter.Limits) *int64 { return &l.MaxIndexDepth }, 4},
	} {
		t.Run(tc.key, func(t *testing.T) {
			def := service.DefaultConfig()
			assert.Equal(t, tc.def, *tc.field(&def.Limits), "default")
			assert.Equal(t, tc.def, def.TOML()[tc.key], "dumped")
			for _, v := range []int64{12345, -1} {
				cfg, err := service.ParseConfig(map[string]any{tc.key: v})
				require.NoError(t, err)
				assert.Equal(t, v, *tc.field(&cfg.Limits))
				assert.Equal(t, v, cfg.TOML()[tc.key])
			}
			_, err := service.ParseConfig(map[string]any{tc.key: "lots"})
			assert.True(t, errdefs.IsInvalidArgument(err), "%v", err)
		})
	}
}
