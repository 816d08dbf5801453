package integration

import (
	"regexp"
	"testing"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// --user applies to the registry of the reference the user named and no
// other: a layer whose only known source is another registry is fetched from
// it without the credentials. Both registries accept the same account, so a
// leak would be let in and seen in the second one's log. The second listens
// on 127.0.0.1:80: distribution-source labels name hosts without a port, as
// containerd writes them. The same holds for the conversion a push with
// --force-compression runs first.
func TestCredentialsStayWithTheNamedRegistry(t *testing.T) {
	requireRoot(t)
	named := startAuthRegistry(t, "", "alice", "secret")
	other := startAuthRegistry(t, "127.0.0.1:80", "alice", "secret")
	d := startDaemon(t, bins.containerdLazyconv, testConfig)
	lc := func(args ...string) string {
		return mustLazyconv(t, append([]string{"--address", d.address}, args...)...)
	}
	inOther := other.host + "/creds/app:v1"
	img := newTestImage(t, inOther, 0)
	lc("image", "import", img.archive)
	lc("image", "push", "--plain-http", "--user", "alice:secret", inOther)
	lc("image", "rm", inOther)
	lc("image", "pull", "--lazy", "--plain-http", "--user", "alice:secret", inOther)

	// The same image under the named registry's name: its layers are known
	// (from distribution-source labels) to be in the other registry only.
	c := d.client(t)
	ctx := nsContext("default")
	src, err := c.ImageService().Get(ctx, inOther)
	require.NoError(t, err)
	inNamed := named.host + "/creds/app:v1"
	_, err = c.ImageService().Create(ctx, images.Image{Name: inNamed, Target: src.Target})
	require.NoError(t, err)

	_, offset := other.logSince(t, 0)
	out, err := lazyconv(t, "--address", d.address, "image", "convert", "--estargz", "--oci", "--plain-http", "--user", "alice:secret",
		inNamed, named.host+"/creds/app:esgz")
	require.Error(t, err, "the layers could only come from the other registry with the named one's credentials:\n%s", out)
	log, offset := other.logSince(t, offset)
	blobs := func(status string) int {
		return len(regexp.MustCompile(`"GET /v2/creds/app/blobs/sha256:[0-9a-f]+ HTTP/1.1" `+status).FindAllString(log, -1))
	}
	assert.Positive(t, blobs("401"), "the other registry was asked, and challenged:\n%s", log)
	assert.Zero(t, blobs("200"), "the other registry never saw the credentials:\n%s", log)

	// A push to the named registry that converts on the way: the credentials
	// are the push target's, not those of the registry the local image's
	// layers come from.
	out, err = lazyconv(t, "--address", d.address, "image", "push", "--force-compression", "estargz", "--plain-http", "--user", "alice:secret",
		named.host+"/creds/pushed:v1", inOther)
	require.Error(t, err, "the local image's layers could only come from the other registry with the push target's credentials:\n%s", out)
	log, offset = other.logSince(t, offset)
	assert.Positive(t, blobs("401"), "the other registry was asked, and challenged:\n%s", log)
	assert.Zero(t, blobs("200"), "the other registry never saw the push target's credentials:\n%s", log)

	// Named, the same registry gets them: the conversion works.
	lc("image", "convert", "--estargz", "--oci", "--plain-http", "--user", "alice:secret", inOther, other.host+"/creds/app:esgz")
	log, _ = other.logSince(t, offset)
	assert.Positive(t, blobs("200"), "with its own name, the registry is sent the credentials:\n%s", log)
}
