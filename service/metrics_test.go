package service_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/service"
)

// metricValue reads one sample of the process's Prometheus registry.
func metricValue(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := prometheus.DefaultGatherer.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if want, ok := labels[l.GetName()]; ok && want != l.GetValue() {
					continue next
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			if g := m.GetGauge(); g != nil {
				return g.GetValue()
			}
			if h := m.GetHistogram(); h != nil {
				return float64(h.GetSampleCount())
			}
		}
	}
	return 0
}

// The counters move by exactly what each conversion did.
func TestMetricsCountWhatWasDone(t *testing.T) {
	f := newFixture(t, service.DefaultConfig())
	layers := func(result string) float64 {
		return metricValue(t, "lazyconv_layers_total", map[string]string{"format": "estargz", "result": result})
	}
	images := func(result, class string) float64 {
		return metricValue(t, "lazyconv_images_total", map[string]string{"format": "estargz", "result": result, "class": class})
	}
	committed, cached, converted := layers("committed"), layers("cached"), images("converted", "")
	read := metricValue(t, "lazyconv_read_bytes_total", map[string]string{"format": "estargz"})
	timed := metricValue(t, "lazyconv_layer_conversion_seconds", map[string]string{"format": "estargz"})
	convert := func(source string) error {
		return f.svc.ConvertImage(f.ctx, &api.ConvertRequest{Source: source, Target: source + "-esgz", AllPlatforms: true},
			func(*api.ConvertEvent) error { return nil })
	}
	require.NoError(t, convert("app:v1"))
	assert.Equal(t, committed+2, layers("committed"))
	assert.Equal(t, converted+1, images("converted", ""))
	assert.Greater(t, metricValue(t, "lazyconv_read_bytes_total", map[string]string{"format": "estargz"}), read)
	assert.Equal(t, timed+2, metricValue(t, "lazyconv_layer_conversion_seconds", map[string]string{"format": "estargz"}))

	require.NoError(t, convert("app:v1"))
	assert.Equal(t, committed+2, layers("committed"), "nothing more was converted")
	assert.Equal(t, cached+2, layers("cached"))
	assert.Equal(t, converted+2, images("converted", ""))

	notFound := images("failed", "not_found")
	require.Error(t, convert("missing:v1"))
	assert.Equal(t, notFound+1, images("failed", "not_found"))
	assert.Zero(t, metricValue(t, "lazyconv_images_in_flight", nil))
}
