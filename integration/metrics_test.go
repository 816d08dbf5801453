package integration

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// scrape returns the value of one sample of a Prometheus text endpoint.
func scrape(t *testing.T, url, sample string) float64 {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(sample) + ` (\S+)$`).FindSubmatch(body)
	if m == nil {
		return 0
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	require.NoError(t, err)
	return v
}

// containerd-lazyconv serves lazyconv's metrics on containerd's own metrics
// endpoint, and logs one line per image conversion.
func TestMetricsOnContainerdsEndpoint(t *testing.T) {
	requireRoot(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	l.Close()
	d := startDaemon(t, bins.containerdLazyconv, testConfig+fmt.Sprintf("\n[plugins.'io.containerd.server.v1.metrics']\n  address = %q\n", addr))
	url := "http://" + addr + "/v1/metrics"
	img := newTestImage(t, "example.com/metrics/app:v1", 0)
	mustLazyconv(t, "--address", d.address, "image", "import", img.archive)

	committed := `lazyconv_layers_total{format="estargz",result="committed"}`
	cached := `lazyconv_layers_total{format="estargz",result="cached"}`
	converted := `lazyconv_images_total{class="",format="estargz",result="converted"}`
	mustLazyconv(t, "--address", d.address, "image", "convert", "--estargz", "--oci", "example.com/metrics/app:v1", "example.com/metrics/app:esgz")
	assert.Equal(t, 3.0, scrape(t, url, committed))
	assert.Equal(t, 1.0, scrape(t, url, converted))
	assert.Positive(t, scrape(t, url, `lazyconv_read_bytes_total{format="estargz"}`))
	assert.Equal(t, 3.0, scrape(t, url, `lazyconv_layer_conversion_seconds_count{format="estargz"}`))

	mustLazyconv(t, "--address", d.address, "image", "convert", "--estargz", "--oci", "example.com/metrics/app:v1", "example.com/metrics/app:esgz2")
	assert.Equal(t, 3.0, scrape(t, url, committed), "the second conversion converted nothing")
	assert.Equal(t, 3.0, scrape(t, url, cached))
	assert.Equal(t, 2.0, scrape(t, url, converted))

	_, err = lazyconv(t, "--address", d.address, "image", "convert", "--estargz", "missing:v1", "x")
	require.Error(t, err)
	assert.Equal(t, 1.0, scrape(t, url, `lazyconv_images_total{class="not_found",format="estargz",result="failed"}`))
	assert.Regexp(t, `level=info msg="lazyconv: converted image".*converted=3`, d.logText())
	assert.Regexp(t, `level=info msg="lazyconv: converted image".*cached=3`, d.logText())
}
