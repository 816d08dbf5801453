package rules

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestTransitions(t *testing.T) {
	for _, tc := range []struct {
		from state
		in   input
		to   state
		ok   bool
	}{
		{idle, triggered, queued, true},
		{queued, triggered, queued, true},
		{queued, started, running, true},
		{running, triggered, rerun, true},
		{running, finished, idle, true},
		{running, failedTransiently, waiting, true},
		{rerun, triggered, rerun, true},
		{rerun, finished, queued, true},
		{rerun, failedTransiently, queued, true},
		{waiting, triggered, waiting, true},
		{waiting, backedOff, queued, true},
		{idle, started, idle, false},
		{idle, finished, idle, false},
		{queued, finished, queued, false},
		{waiting, started, waiting, false},
	} {
		to, ok := transition(tc.from, tc.in)
		assert.Equal(t, tc.ok, ok, "%s --%s-->", tc.from, tc.in)
		assert.Equal(t, tc.to, to, "%s --%s-->", tc.from, tc.in)
	}
}
