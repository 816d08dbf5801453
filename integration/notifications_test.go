package integration

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/labels"
)

// freeAddr is a free TCP address on 127.0.0.1.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

// The real distribution v3 registry notifies containerd-lazyconv of pushes
// (notifications.endpoints pointing at its notifications address): `ctr
// images push` of an image makes the converted tag appear in the registry
// with no command on the node; it verifies once pulled into another
// namespace. Redelivered notifications (here a Harbor webhook of the same
// push) change nothing; notifications of the rule's own outputs are
// ignored; a request without the token is refused.
func TestRegistryNotificationsConvertPushedImages(t *testing.T) {
	requireRoot(t)
	const token = "lazyconv-test-token"
	notify := freeAddr(t)
	reg := startRegistryWith(t, "", fmt.Sprintf(`notifications:
  endpoints:
    - name: lazyconv
      url: http://%s/notifications
      headers:
        Authorization: [Bearer %s]
      timeout: 10s
      threshold: 3
      backoff: 1s
      ignoredmediatypes:
        - application/octet-stream
      ignore:
        actions: [pull, delete, mount]
`, notify, token))
	d := startDaemon(t, bins.containerdLazyconv, testConfig+fmt.Sprintf(`
[plugins.'io.containerd.grpc.v1.lazyconv'.notifications]
  address = %q
  token = %q
[[plugins.'io.containerd.grpc.v1.lazyconv'.rules]]
  match = "127.0.0.1:*/notified/*"
  format = "estargz"
  tag_suffix = "-esgz"
  namespaces = ["lazyconv"]
  push = true
`, notify, token))
	ref := reg.host + "/notified/app:v1"

	// A client pushes from its own namespace (no rule there): only the
	// registry's notification can make the conversion.
	img := newTestImage(t, ref, 0)
	mustLazyconv(t, "--address", d.address, "-n", "ci", "image", "import", img.archive)
	out, err := exec.Command(bins.ctr, "--address", d.address, "-n", "ci", "images", "push", "--plain-http", ref).CombinedOutput()
	require.NoError(t, err, string(out))

	c := d.client(t)
	defer c.Close()
	deadline := time.Now().Add(90 * time.Second)
	var converted string
	var local images.Image
	for { // pushed, and labelled pushed
		converted = registryDigest(t, reg.host, "notified/app", "v1-esgz")
		var err error
		local, err = c.ImageService().Get(nsContext("lazyconv"), ref+"-esgz")
		if converted != "" && err == nil && local.Labels[labels.RulePushed] == converted {
			break
		}
		require.True(t, time.Now().Before(deadline), "the registry's push made no conversion:\n%s", d.logText())
		time.Sleep(100 * time.Millisecond)
	}
	assert.Equal(t, converted, local.Target.Digest.String())

	pulled := mustLazyconv(t, "--address", d.address, "-n", "verify", "image", "pull", "--plain-http", ref+"-esgz")
	assert.Contains(t, pulled, ref+"-esgz")
	verified := mustLazyconv(t, "--address", d.address, "-n", "verify", "image", "verify", ref+"-esgz")
	assert.Contains(t, verified, "3 lazy-pull layers verified")

	// Redelivery (Harbor's webhook for the same push): accepted, nothing new.
	src, err := c.ImageService().Get(nsContext("lazyconv"), ref)
	require.NoError(t, err)
	harbor := fmt.Sprintf(`{"type":"PUSH_ARTIFACT","occur_at":1,"operator":"ci","event_data":{"resources":[{"digest":%q,"tag":"v1","resource_url":%q}],"repository":{"name":"app","namespace":"notified","repo_full_name":"notified/app","repo_type":"private"}}}`,
		src.Target.Digest, ref)
	post := func(auth string) int {
		req, err := http.NewRequest(http.MethodPost, "http://"+notify+"/notifications", bytes.NewBufferString(harbor))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	assert.Equal(t, http.StatusUnauthorized, post(""), "no token")
	assert.Equal(t, http.StatusUnauthorized, post("Bearer wrong"), "a wrong token")
	assert.Equal(t, http.StatusOK, post("Bearer "+token))
	time.Sleep(2 * time.Second)
	again, err := c.ImageService().Get(nsContext("lazyconv"), ref+"-esgz")
	require.NoError(t, err)
	assert.Equal(t, local.Target, again.Target, "the redelivered push converted nothing new")
	assert.Equal(t, local.UpdatedAt, again.UpdatedAt, "the output was not even stored again")
	assert.Empty(t, registryDigest(t, reg.host, "notified/app", "v1-esgz-esgz"), "the output's own push notification is ignored")

	// A name the namespace holds already, that no notification made (a
	// workload's image, say): a push to the registry under it moves nothing.
	mine := reg.host + "/notified/mine:v1"
	own := newTestImage(t, mine, 0)
	mustLazyconv(t, "--address", d.address, "-n", "lazyconv", "image", "import", own.archive)
	before, err := c.ImageService().Get(nsContext("lazyconv"), mine)
	require.NoError(t, err)
	other := multiPlatformArchive(t, mine)
	out, err = exec.Command(bins.ctr, "--address", d.address, "-n", "ci", "images", "import", "--all-platforms", other).CombinedOutput()
	require.NoError(t, err, string(out))
	out, err = exec.Command(bins.ctr, "--address", d.address, "-n", "ci", "images", "push", "--plain-http", mine).CombinedOutput()
	require.NoError(t, err, string(out))
	deadline = time.Now().Add(30 * time.Second)
	for !strings.Contains(d.logText(), "not converting "+mine) {
		require.True(t, time.Now().Before(deadline), "the notification of %s was not refused:\n%s", mine, d.logText())
		time.Sleep(100 * time.Millisecond)
	}
	after, err := c.ImageService().Get(nsContext("lazyconv"), mine)
	require.NoError(t, err)
	assert.Equal(t, before.Target, after.Target, "the namespace's own image is not moved")
}
