package convertcmd

import (
	"testing"
	"time"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/stretchr/testify/assert"
)

func TestLayerLineShowsPercentAndETAWhileLive(t *testing.T) {
	for _, tc := range []struct {
		name string
		st   converter.LayerStatus
		want []string
		not  []string
	}{
		{"converting", converter.LayerStatus{Digest: "sha256:0123456789abcdef", Size: 100 << 20, State: converter.StateConverting,
			BytesIn: 25 << 20, Elapsed: 10 * time.Second}, []string{"converting", " 25%", "eta 30s"}, nil},
		{"fetching", converter.LayerStatus{Digest: "sha256:0123456789abcdef", Size: 100, State: converter.StateFetching,
			BytesIn: 50, Elapsed: time.Second}, []string{"fetching", " 50%", "eta 1s"}, nil},
		{"queued", converter.LayerStatus{Digest: "sha256:0123456789abcdef", Size: 100, State: converter.StateQueued}, []string{"queued"}, []string{"%", "eta"}},
		{"committed", converter.LayerStatus{Digest: "sha256:0123456789abcdef", Size: 100, State: converter.StateCommitted,
			BytesIn: 100, Elapsed: time.Second}, []string{"committed"}, []string{"eta"}},
		{"rebuilt", converter.LayerStatus{Digest: "sha256:0123456789abcdef", Size: 100, State: converter.StateCommitted, Origin: "snapshot"},
			[]string{"from snapshot"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			line := LayerLine(tc.st)
			for _, w := range tc.want {
				assert.Contains(t, line, w)
			}
			for _, n := range tc.not {
				assert.NotContains(t, line, n)
			}
		})
	}
}
