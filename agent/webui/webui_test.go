package webui

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/agent/gateway"
)

const (
	aliceKey = "sk-llm-alice-0123456789"
	bobKey   = "sk-llm-bob-0123456789"
)

// page is a page in front of a recording stand-in for the gateway, over HTTP.
type page struct {
	srv      *httptest.Server
	keysFile string
	keys     *gateway.Keys
	seen     chan *http.Request // what reached the gateway
	p        *Page
}

func writeKeys(t *testing.T, path string, keys ...string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("keys:\n")
	for _, k := range keys {
		name := strings.Split(k, "-")[2]
		b.WriteString("  - {name: " + name + ", project: p-" + name + ", key: " + k + "}\n")
	}
	require.NoError(t, os.WriteFile(path, []byte(b.String()), 0o600))
}

func newPage(t *testing.T, tweak ...func(*Options)) *page {
	t.Helper()
	pg := &page{keysFile: filepath.Join(t.TempDir(), "keys.yaml"), seen: make(chan *http.Request, 8)}
	writeKeys(t, pg.keysFile, aliceKey, bobKey)
	var err error
	pg.keys, err = gateway.NewKeys(pg.keysFile, nil, hclog.NewNullLogger())
	require.NoError(t, err)
	gw := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pg.seen <- r
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n")
	})
	o := Options{Gateway: gw, Keys: pg.keys,
		Status: func(*http.Request) (Status, error) { return Status{JobID: "7", State: "ready"}, nil },
		Usage: func() (gateway.UsageReport, error) {
			return gateway.UsageReport{GPUs: 1, Keys: []gateway.UsageRow{{Key: "alice", Requests: 2}, {Key: "bob", Requests: 3}},
				Projects: []gateway.UsageRow{{Project: "p-alice"}}}, nil
		},
		Owner: func(k gateway.Key) bool { return k.Name == "alice" }}
	for _, f := range tweak {
		f(&o)
	}
	pg.p = New(o)
	pg.srv = httptest.NewServer(pg.p.Mount(http.NotFoundHandler()))
	t.Cleanup(pg.srv.Close)
	return pg
}

// do sends a request as the page's script would, with extra headers.
func (pg *page) do(t *testing.T, method, path, body string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, pg.srv.URL+path, strings.NewReader(body))
	require.NoError(t, err)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(b)
}

// signIn signs in with key and returns the cookie and the CSRF token.
func (pg *page) signIn(t *testing.T, key string) (string, string) {
	t.Helper()
	resp, body := pg.do(t, "POST", "/ui/api/session", `{"key":"`+key+`"}`,
		map[string]string{"Content-Type": "application/json", "Origin": pg.srv.URL, "Sec-Fetch-Site": "same-origin"})
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	var me signedInAs
	require.NoError(t, json.Unmarshal([]byte(body), &me))
	require.Len(t, resp.Cookies(), 1)
	return cookieName + "=" + resp.Cookies()[0].Value, me.CSRF
}

func TestSecurityHeaders(t *testing.T) {
	pg := newPage(t)
	for _, path := range []string{"/ui/", "/ui/app.js", "/ui/api/status"} {
		resp, _ := pg.do(t, "GET", path, "", nil)
		csp := resp.Header.Get("Content-Security-Policy")
		assert.Contains(t, csp, "script-src 'self';", path)
		assert.NotContains(t, csp, "unsafe-inline", path)
		assert.Contains(t, csp, "frame-ancestors 'none'", path)
		assert.Equal(t, "DENY", resp.Header.Get("X-Frame-Options"), path)
		assert.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"), path)
	}
	framed := newPage(t, func(o *Options) { o.FrameAncestors = []string{"https://ondemand.example.edu"} })
	resp, _ := framed.do(t, "GET", "/ui/", "", nil)
	assert.Contains(t, resp.Header.Get("Content-Security-Policy"), "frame-ancestors https://ondemand.example.edu")
	assert.Empty(t, resp.Header.Get("X-Frame-Options"))
	// The bare /ui redirects relatively, so that it works under any prefix.
	req, _ := http.NewRequest("GET", pg.srv.URL+"/ui", nil)
	resp, err := http.DefaultTransport.RoundTrip(req)
	require.NoError(t, err)
	assert.Equal(t, "ui/", resp.Header.Get("Location"))
	// Nothing else of the gateway's port is the page's.
	resp, _ = pg.do(t, "GET", "/v1/models", "", nil)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
}

// TestStaticPageHasNoInlineCode: the page's HTML has no inline script or handler, and its
// script never writes HTML from data.
func TestStaticPageHasNoInlineCode(t *testing.T) {
	html, err := static.ReadFile("static/index.html")
	require.NoError(t, err)
	js, err := static.ReadFile("static/app.js")
	require.NoError(t, err)
	assert.NotRegexp(t, `<script(?:\s[^>]*)?>\s*[^<\s]`, string(html), "inline script")
	assert.NotRegexp(t, `(?i)\son[a-z]+\s*=`, string(html), "inline event handler")
	assert.NotRegexp(t, `(?i)style\s*=`, string(html), "inline style")
	for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"} {
		assert.NotContains(t, string(js), bad)
	}
	for _, url := range []string{`'/`, `"/`, "`/"} {
		assert.NotContains(t, string(js), "fetch("+url, "every URL relative")
	}
}

func TestSignIn(t *testing.T) {
	pg := newPage(t)
	same := map[string]string{"Content-Type": "application/json", "Origin": pg.srv.URL}
	resp, body := pg.do(t, "POST", "/ui/api/session", `{"key":"sk-llm-nobody"}`, same)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	assert.NotContains(t, body, "sk-llm-nobody")
	assert.Empty(t, resp.Cookies())

	resp, body = pg.do(t, "POST", "/ui/api/session", `{"key":"`+aliceKey+`"}`, same)
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	assert.NotContains(t, body, aliceKey)
	c := resp.Cookies()[0]
	assert.True(t, c.HttpOnly)
	assert.Equal(t, http.SameSiteStrictMode, c.SameSite)
	assert.False(t, c.Secure, "plain HTTP")
	assert.Empty(t, c.Path, "the browser scopes it to the page's api/ under any prefix")
	assert.NotContains(t, c.Value, aliceKey)
	assert.Contains(t, body, `"owner":true`)

	resp, _ = pg.do(t, "POST", "/ui/api/session", `{"key":"`+bobKey+`"}`,
		map[string]string{"Content-Type": "application/json", "X-Forwarded-Proto": "https"})
	assert.True(t, resp.Cookies()[0].Secure, "behind a TLS proxy")

	for name, hdr := range map[string]map[string]string{
		"another origin":      {"Content-Type": "application/json", "Origin": "http://evil.example"},
		"another site":        {"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"},
		"a form post":         {"Content-Type": "application/x-www-form-urlencoded"},
		"text, no preflight:": {"Content-Type": "text/plain"},
	} {
		resp, _ := pg.do(t, "POST", "/ui/api/session", `{"key":"`+aliceKey+`"}`, hdr)
		assert.Equal(t, http.StatusForbidden, resp.StatusCode, name)
		assert.Empty(t, resp.Cookies(), name)
	}
}

func TestKeyInURLRefused(t *testing.T) {
	pg := newPage(t)
	for _, path := range []string{"/ui/?key=" + aliceKey, "/ui/?api_key=x", "/ui/?q=" + aliceKey, "/ui/" + aliceKey, "/ui/api/status?token=x"} {
		resp, body := pg.do(t, "GET", path, "", nil)
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode, path)
		assert.Contains(t, body, "never goes in a URL", path)
		assert.Empty(t, resp.Cookies(), path)
	}
}

func TestCallsNeedSessionAndCSRF(t *testing.T) {
	pg := newPage(t)
	resp, _ := pg.do(t, "GET", "/ui/api/status", "", nil)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	cookie, csrf := pg.signIn(t, bobKey)
	resp, body := pg.do(t, "GET", "/ui/api/status", "", map[string]string{"Cookie": cookie})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, body, `"job_id":"7"`)

	chat := `{"model":"m","messages":[]}`
	for name, hdr := range map[string]map[string]string{
		"no token":       {"Cookie": cookie, "Content-Type": "application/json"},
		"wrong token":    {"Cookie": cookie, csrfHeader: "x" + csrf},
		"another origin": {"Cookie": cookie, csrfHeader: csrf, "Origin": "http://evil.example"},
	} {
		resp, _ := pg.do(t, "POST", "/ui/api/chat", chat, hdr)
		assert.Equal(t, http.StatusForbidden, resp.StatusCode, name)
	}
	assert.Empty(t, pg.seen, "nothing reached the gateway")

	resp, body = pg.do(t, "POST", "/ui/api/chat", chat, map[string]string{"Cookie": cookie, csrfHeader: csrf,
		"Content-Type": "application/json", "Origin": pg.srv.URL})
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	assert.Contains(t, body, "data: [DONE]")
	r := <-pg.seen
	assert.Equal(t, "/v1/chat/completions", r.URL.Path)
	assert.Equal(t, "Bearer "+bobKey, r.Header.Get("Authorization"), "the gateway sees the key, as from any client")
	assert.Empty(t, r.Header.Get("Cookie"), "the session does not travel on")

	resp, _ = pg.do(t, "DELETE", "/ui/api/session", "", map[string]string{"Cookie": cookie, csrfHeader: csrf})
	assert.Equal(t, http.StatusNoContent, resp.StatusCode)
	resp, _ = pg.do(t, "GET", "/ui/api/status", "", map[string]string{"Cookie": cookie})
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "signed out")
}

func TestRevokedKeyEndsItsSession(t *testing.T) {
	pg := newPage(t)
	cookie, _ := pg.signIn(t, bobKey)
	writeKeys(t, pg.keysFile, aliceKey)
	require.NoError(t, pg.keys.Reload())
	resp, _ := pg.do(t, "GET", "/ui/api/status", "", map[string]string{"Cookie": cookie})
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
}

func TestUsageByKey(t *testing.T) {
	pg := newPage(t)
	for key, want := range map[string][]string{bobKey: {"bob"}, aliceKey: {"alice", "bob"}} {
		cookie, _ := pg.signIn(t, key)
		resp, body := pg.do(t, "GET", "/ui/api/usage", "", map[string]string{"Cookie": cookie})
		require.Equal(t, http.StatusOK, resp.StatusCode)
		var rep gateway.UsageReport
		require.NoError(t, json.Unmarshal([]byte(body), &rep))
		var got []string
		for _, r := range rep.Keys {
			got = append(got, r.Key)
		}
		assert.Equal(t, want, got, "signed in as %s", key)
	}
}

func TestSessionsExpireAndAreBounded(t *testing.T) {
	s := newSessions(time.Hour, 2)
	now := time.Now()
	a, _ := s.add("a", now)
	_, ok := s.get(a, now.Add(2*time.Hour))
	assert.False(t, ok, "expired")
	b, _ := s.add("b", now)
	s.add("c", now.Add(time.Second))
	s.add("d", now.Add(2*time.Second))
	_, ok = s.get(b, now.Add(3*time.Second))
	assert.False(t, ok, "the least recently used went first")
	assert.Len(t, s.byID, 2)
}
