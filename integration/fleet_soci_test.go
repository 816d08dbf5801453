package integration

import (
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/labels"
)

// A SOCI conversion travels through the registry as the others do: node A
// converts and pushes (publishing it as a referrer of the source
// manifest); node B adopts it once each zTOC checks out against its layer
// (it reads the source layers, which a zTOC is checked against, but builds
// nothing); node C, which trusts the repository, adopts it reading neither
// a source layer nor a check; all three have the same SOCI-enabled image,
// and `image verify` on C checks every zTOC.
func TestFleetSOCI(t *testing.T) { forEachRegistry(t, testFleetSOCI) }

func testFleetSOCI(t *testing.T, reg *registry) {
	a := startDaemon(t, bins.containerdLazyconv, testConfig)
	b := startDaemon(t, bins.containerdLazyconv, testConfig)
	c := startDaemon(t, bins.containerdLazyconv, trustingConfig(reg.host+"/fleetsoci/*"))
	src := reg.host + "/fleetsoci/app:v1"
	pushSource(t, a, src)
	socify := []string{"image", "convert", "--soci", "--soci-min-layer-size", "0", "--soci-span-size", "65536", "--plain-http", src, src + "-soci"}

	mustLazyconv(t, "--address", a.address, "image", "pull", "--lazy", "--plain-http", src)
	outA := mustLazyconv(t, append([]string{"--address", a.address}, socify...)...)
	digestA := convertedDigest(t, outA)
	assert.NotContains(t, outA, "adopted from")
	pushed := mustLazyconv(t, "--address", a.address, "image", "push", "--plain-http", src+"-soci")
	assert.Contains(t, pushed, "published conversion "+reg.host+"/fleetsoci/app@sha256:", pushed)
	var sourceDigests []string
	for _, l := range sourceLayers(t, a, src) {
		sourceDigests = append(sourceDigests, l.Digest.String())
	}

	// Node B checks each zTOC against its layer, then adopts.
	mustLazyconv(t, "--address", b.address, "image", "pull", "--lazy", "--plain-http", src)
	outB := mustLazyconv(t, append([]string{"--address", b.address}, socify...)...)
	assert.Equal(t, digestA, convertedDigest(t, outB), "node B gets node A's SOCI-enabled image:\n%s", outB)
	assert.Regexp(t, regexp.MustCompile(`adopted from `+regexp.QuoteMeta(reg.host+"/fleetsoci/app@")+`sha256:`), outB)
	assert.NotContains(t, outB, "warning", outB)

	// Node C trusts the repository: no source layer read.
	mustLazyconv(t, "--address", c.address, "image", "pull", "--lazy", "--plain-http", src)
	_, offset := reg.logSince(t, 0)
	outC := mustLazyconv(t, append([]string{"--address", c.address}, socify...)...)
	assert.Equal(t, digestA, convertedDigest(t, outC), outC)
	assert.Contains(t, outC, "adopted from")
	log, offset := reg.logSince(t, offset)
	assert.Empty(t, anyBlobGET(log, sourceDigests), "node C read no source layer")
	// What C adopted unread, it checks on demand (fetching the layers).
	verified := mustLazyconv(t, "--address", c.address, "image", "verify", src+"-soci")
	require.Regexp(t, `: [1-9]\d* lazy-pull layers verified`, verified)
	log, _ = reg.logSince(t, offset)
	assert.NotEmpty(t, anyBlobGET(log, sourceDigests), "verify read the layers to check the zTOCs against")
	// And does not publish it again.
	pushedC := mustLazyconv(t, "--address", c.address, "image", "push", "--plain-http", reg.host+"/fleetsoci/copy:soci", src+"-soci")
	assert.NotContains(t, pushedC, "published conversion", pushedC)
	_ = labels.ConversionArtifactType
}
