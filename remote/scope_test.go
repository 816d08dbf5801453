package remote

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRegistryOptionsApplyToTheNamedHostOnly(t *testing.T) {
	o := RegistryOptions{PlainHTTP: true, Username: "alice", Password: "secret"}
	creds, plain := o.credentialsFor("registry.example:5000"), o.plainHTTPFor("registry.example:5000")
	for _, tc := range []struct {
		host      string
		user      string
		plainHTTP bool
	}{
		{"registry.example:5000", "alice", true},
		{"registry.example", "", false},
		{"other.example:5000", "", false},
		{"s3.amazonaws.com", "", false},
		{"localhost:5000", "", true}, // localhost is always plain HTTP, never credentialled
	} {
		t.Run(tc.host, func(t *testing.T) {
			user, pass, err := creds(tc.host)
			require.NoError(t, err)
			assert.Equal(t, tc.user, user)
			if tc.user == "" {
				assert.Empty(t, pass)
			}
			p, err := plain(tc.host)
			require.NoError(t, err)
			assert.Equal(t, tc.plainHTTP, p)
		})
	}
	// A reference with no registry host gets credentials nowhere.
	user, _, _ := o.credentialsFor("")("registry.example:5000")
	assert.Empty(t, user)
}
