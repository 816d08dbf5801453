package service

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/docker/go-metrics"

	"github.com/lazyconv/lazyconv/converter"
)

// metricSet is the service's Prometheus metrics, registered once per process
// with docker/go-metrics, as containerd's own are: containerd serves them on
// its [metrics] address at /v1/metrics, under the lazyconv_ prefix.
type metricSet struct {
	layers   metrics.LabeledCounter // lazyconv_layers_total{format,result}
	images   metrics.LabeledCounter // lazyconv_images_total{format,result,class}
	read     metrics.LabeledCounter // lazyconv_read_bytes_total{format}
	written  metrics.LabeledCounter // lazyconv_written_bytes_total{format}
	duration metrics.LabeledTimer   // lazyconv_layer_conversion_seconds{format}
	inFlight metrics.Gauge          // lazyconv_images_in_flight
}

var (
	metricsOnce sync.Once
	processSet  *metricSet
)

// serviceMetrics returns the process's metrics, registering them the first time.
func serviceMetrics() *metricSet {
	metricsOnce.Do(func() {
		ns := metrics.NewNamespace("lazyconv", "", nil)
		processSet = &metricSet{
			layers: ns.NewLabeledCounter("layers", "Layers by format and result: committed (converted), cached, kept, shared (converted by another node, from the registry), failed", "format", "result"),
			images: ns.NewLabeledCounter("images", "Image conversions by format and result (converted, failed) and the errdefs class of a failure",
				"format", "result", "class"),
			read:     ns.NewLabeledCounter("read_bytes", "Source bytes read by layer conversions", "format"),
			written:  ns.NewLabeledCounter("written_bytes", "Bytes written by layer conversions", "format"),
			duration: ns.NewLabeledTimer("layer_conversion", "Time to convert one layer (committed layers only)", "format"),
			inFlight: ns.NewGauge("images_in_flight", "Image conversions running", metrics.Unit("")),
		}
		metrics.Register(ns)
	})
	return processSet
}

// errClass names an error's errdefs class, for the failed-conversions label.
func errClass(err error) string {
	for _, c := range []struct {
		name string
		is   func(error) bool
	}{
		{"invalid_argument", errdefs.IsInvalidArgument}, {"not_found", errdefs.IsNotFound},
		{"unavailable", errdefs.IsUnavailable}, {"permission_denied", errdefs.IsPermissionDenied},
		{"failed_precondition", errdefs.IsFailedPrecondition}, {"already_exists", errdefs.IsAlreadyExists},
		{"canceled", func(err error) bool { return errdefs.IsCanceled(err) || errors.Is(err, context.Canceled) }},
		{"deadline_exceeded", func(err error) bool {
			return errdefs.IsDeadlineExceeded(err) || errors.Is(err, context.DeadlineExceeded)
		}},
	} {
		if c.is(err) {
			return c.name
		}
	}
	return "unknown"
}

// record counts an image conversion and logs one line for it.
func (m *metricSet) record(ctx context.Context, source, target, format string, layers []converter.LayerStatus, err error, elapsed time.Duration) {
	counts := map[converter.LayerState]int{}
	var in, out int64
	for _, l := range layers {
		counts[l.State]++
		in += l.BytesIn
		out += l.BytesOut
		switch l.State {
		case converter.StateCommitted:
			m.layers.WithValues(format, "committed").Inc()
			m.duration.WithValues(format).Update(l.Elapsed)
		case converter.StateCached:
			m.layers.WithValues(format, "cached").Inc()
		case converter.StateKept:
			m.layers.WithValues(format, "kept").Inc()
		case converter.StateShared:
			m.layers.WithValues(format, "shared").Inc()
		case converter.StateFailed:
			m.layers.WithValues(format, "failed").Inc()
		}
	}
	m.read.WithValues(format).Inc(float64(in))
	m.written.WithValues(format).Inc(float64(out))
	entry := log.G(ctx).WithFields(log.Fields{
		"image": source, "target": target, "format": format,
		"converted": counts[converter.StateCommitted], "cached": counts[converter.StateCached],
		"kept": counts[converter.StateKept], "shared": counts[converter.StateShared], "failed": counts[converter.StateFailed],
		"bytes_in": in, "bytes_out": out, "seconds": elapsed.Round(time.Millisecond).Seconds(),
	})
	if err != nil {
		m.images.WithValues(format, "failed", errClass(err)).Inc()
		entry.WithError(err).Warn("lazyconv: image conversion failed")
		return
	}
	m.images.WithValues(format, "converted", "").Inc()
	entry.Info("lazyconv: converted image")
}
