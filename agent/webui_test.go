package agent

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// TestRunWebPage: the gateway's port serves the web page, which signs in with the job's key
// (its owner's), shows the job as its files say and lists the models through the gateway.
func TestRunWebPage(t *testing.T) {
	dir := t.TempDir()
	run := startAgent(testConfig(t, dir), testDeps(t, map[string]string{}, "laptop"))
	c := waitConnState(t, dir, jobfiles.StateReady, 20*time.Second)
	key, err := os.ReadFile(c.APIKeyFile)
	require.NoError(t, err)
	root := strings.TrimSuffix(c.BaseURL, "/v1")
	jar, _ := cookiejar.New(nil)
	client := &http.Client{Jar: jar, Timeout: 10 * time.Second}
	call := func(method, path, body string, hdr ...string) (int, string) {
		req, err := http.NewRequest(method, root+path, strings.NewReader(body))
		require.NoError(t, err)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := client.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, page := call("GET", "/ui/", "")
	require.Equal(t, 200, code)
	assert.Contains(t, page, `<script src="app.js" defer></script>`)
	code, _ = call("GET", "/ui/api/status", "")
	assert.Equal(t, 401, code)
	code, body := call("POST", "/ui/api/session", `{"key":"`+strings.TrimSpace(string(key))+`"}`, "Content-Type", "application/json")
	require.Equal(t, 200, code, body)
	assert.Contains(t, body, `"owner":true`)
	require.Eventually(t, func() bool {
		_, body = call("GET", "/ui/api/status", "")
		return strings.Contains(body, `"state":"Live"`)
	}, 10*time.Second, 100*time.Millisecond, "last: %s", body)
	var st struct {
		JobID string `json:"job_id"`
		Nodes []struct {
			Name string `json:"name"`
		} `json:"nodes"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &st))
	assert.Equal(t, c.JobID, st.JobID)
	require.Len(t, st.Nodes, 1)
	assert.Equal(t, "laptop", st.Nodes[0].Name)
	code, body = call("GET", "/ui/api/models", "")
	assert.Equal(t, 200, code, body)
	assert.Contains(t, body, `"tiny"`)
	assert.Eventually(t, func() bool { // the audit log reaches the disk each second
		code, body = call("GET", "/ui/api/usage", "")
		return code == 200 && strings.Contains(body, `"key":"job"`)
	}, 10*time.Second, 100*time.Millisecond, "the models call went through the gateway with the job's key: %s", body)
	require.NoError(t, run.stop(t))
	assertNoChildren(t)
}

func TestRunWithoutWebPage(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.UI = false
	run := startAgent(cfg, testDeps(t, map[string]string{}, "laptop"))
	c := waitConnState(t, dir, jobfiles.StateReady, 20*time.Second)
	code, _ := getWithKey(t, strings.TrimSuffix(c.BaseURL, "/v1")+"/ui/", "")
	assert.Equal(t, 404, code)
	require.NoError(t, run.stop(t))
	assertNoChildren(t)
}
