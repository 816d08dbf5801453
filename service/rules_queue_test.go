package service

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRuleQueueIsBoundedAndDropsTheOldest(t *testing.T) {
	q := newRuleQueue(2)
	job := func(name string) ruleJob {
		return ruleJob{namespace: "ns", image: name, rule: Rule{TagSuffix: "-esgz"}}
	}
	assert.Nil(t, q.push(job("a")))
	assert.Nil(t, q.push(job("a")), "a job already waiting is not queued twice")
	assert.Nil(t, q.push(job("b")))
	dropped := q.push(job("c"))
	require.NotNil(t, dropped)
	assert.Equal(t, "a", dropped.image, "the oldest goes")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, want := range []string{"b", "c"} {
		j, ok := q.pop(ctx)
		require.True(t, ok)
		assert.Equal(t, want, j.image)
	}
	_, ok := q.pop(ctx)
	assert.False(t, ok, "an empty queue waits until the context is done")
}

func TestJobsFor(t *testing.T) {
	cfg := Config{Rules: []Rule{
		{Match: "registry.example.com/team/*", Format: "estargz", TagSuffix: "-esgz"},
		{Match: "registry.example.com/team/*", Format: "zstdchunked", TagSuffix: "-zc", Namespaces: []string{"builds"}},
	}}
	for _, tc := range []struct {
		namespace, name string
		suffixes        []string
	}{
		{"default", "registry.example.com/team/app:1.0", []string{"-esgz"}},
		{"builds", "registry.example.com/team/app:1.0", []string{"-esgz", "-zc"}},
		{"default", "registry.example.com/other/app:1.0", nil},
		{"default", "registry.example.com/team/app:1.0-esgz", nil},
		{"builds", "registry.example.com/team/app:1.0-zc", nil},
		{"default", "registry.example.com/team/app@sha256:0123", nil},
	} {
		var got []string
		for _, j := range cfg.jobsFor(tc.namespace, tc.name) {
			got = append(got, j.rule.TagSuffix)
		}
		assert.Equal(t, tc.suffixes, got, "%s in %s", tc.name, tc.namespace)
	}
}
