package rules

import (
	"sync"

	"github.com/docker/go-metrics"
)

// metricSet is the engine's Prometheus metrics, registered once per process
// with docker/go-metrics beside the service's (lazyconv_rule_*).
type metricSet struct {
	jobs            metrics.LabeledCounter // lazyconv_rule_jobs_total{outcome}
	dropped         metrics.Counter        // lazyconv_rule_jobs_dropped_total
	retries         metrics.Counter        // lazyconv_rule_retries_total
	pruned          metrics.Counter        // lazyconv_rule_outputs_pruned_total
	notified        metrics.Counter        // lazyconv_rule_notified_pushes_total
	notifiedIgnored metrics.Counter        // lazyconv_rule_notified_pushes_ignored_total
	queue           metrics.Gauge          // lazyconv_rule_queue_length
}

var (
	metricsOnce sync.Once
	processSet  *metricSet
)

func ruleMetrics() *metricSet {
	metricsOnce.Do(func() {
		ns := metrics.NewNamespace("lazyconv", "rule", nil)
		processSet = &metricSet{
			jobs:            ns.NewLabeledCounter("jobs", "Rule jobs by outcome: converted, current (nothing to do), stale (the source moved on; dropped), skipped, failed", "outcome"),
			dropped:         ns.NewCounter("jobs_dropped", "Rule jobs the full queue could not take (reconcile queues them again)"),
			retries:         ns.NewCounter("retries", "Rule jobs tried again after a transient failure"),
			notified:        ns.NewCounter("notified_pushes", "Pushes registries notified that a rule converts"),
			notifiedIgnored: ns.NewCounter("notified_pushes_ignored", "Notified pushes a rule matches that could not be pulled for good (gone, moved on, refused, a name held by another image)"),
			pruned:          ns.NewCounter("outputs_pruned", "Rule outputs deleted with their source (prune_outputs)"),
			queue:           ns.NewGauge("queue_length", "Rule jobs waiting (queued or waiting to retry)", metrics.Unit("")),
		}
		metrics.Register(ns)
	})
	return processSet
}
