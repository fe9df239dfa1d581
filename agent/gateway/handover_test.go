package gateway

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestHandOver: once the successor serves, new requests get 503 with Retry-After: 1 and the
// successor's address, or a redirect there for a client that asks; every answer closes its
// connection; a request without a key learns nothing.
func TestHandOver(t *testing.T) {
	f := newFixture(t, echoEngine(t), false)
	g := f.gw
	post := func(header map[string]string, key string) *http.Response {
		req, err := http.NewRequest(http.MethodPost, f.url+"/v1/chat/completions", strings.NewReader(`{"model":"m"}`))
		require.NoError(t, err)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp
	}
	resp := post(nil, aliceKey)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.False(t, resp.Close, "keep-alive before the handover")

	g.CloseConnections()
	resp = post(nil, aliceKey)
	assert.Equal(t, http.StatusOK, resp.StatusCode, "still serving while followers move")
	assert.True(t, resp.Close)

	g.HandOver("http://10.0.0.2:8001/v1")
	resp = post(nil, aliceKey)
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.Equal(t, "1", resp.Header.Get("Retry-After"))
	assert.Equal(t, "http://10.0.0.2:8001/v1", resp.Header.Get(SuccessorHeader))
	assert.True(t, resp.Close)

	resp = post(map[string]string{FollowHeader: "redirect"}, aliceKey)
	assert.Equal(t, http.StatusTemporaryRedirect, resp.StatusCode)
	assert.Equal(t, "http://10.0.0.2:8001/v1/chat/completions", resp.Header.Get("Location"))

	resp = post(nil, "")
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	assert.Empty(t, resp.Header.Get(SuccessorHeader))

	r, err := http.Get(f.url + "/readyz")
	require.NoError(t, err)
	r.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, r.StatusCode, "/readyz says not ready: a tunnel reads the file again")
}
