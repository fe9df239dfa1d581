//go:build e2e

package e2e

import (
	"bufio"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/jobfiles"
)

const (
	aliceKey = "sk-alice-e2e-0123456789abcdef"
	bobKey   = "sk-bob-e2e-0123456789abcdef01"
)

// TestGatewayKeysAuditAndEngineRestart runs a job behind the gateway with a keys file: both keys
// work and are accounted for, and an engine killed in the middle of a stream gives its client a
// clean error, the next requests 503 until the engine is back, then 200.
func TestGatewayKeysAuditAndEngineRestart(t *testing.T) {
	keys := filepath.Join(suite.work, "keys-"+strings.ReplaceAll(t.Name(), "/", "_")+".yaml")
	require.NoError(t, os.WriteFile(keys, []byte("keys:\n  - {name: alice, project: climate, key: "+aliceKey+"}\n"+
		"  - {name: bob, project: genomics, sha256: "+sha256hex(bobKey)+"}\n"), 0o600))
	j := submit(t, jobSpec{script: "singlenode.sbatch", sbatch: []string{"--gpus-per-node=2", "--cpus-per-task=1"},
		agent: []string{"--keys-file", keys}})
	c := j.waitState(jobfiles.StateReady, readyTimeout)
	assert.True(t, c.Gateway)
	assert.Empty(t, c.APIKeyFile)

	for _, key := range []string{aliceKey, bobKey} {
		resp, body := chat(t, c.BaseURL, key, c.ServedModelName, false)
		assert.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	}
	resp, _ := chat(t, c.BaseURL, "", c.ServedModelName, false)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)

	// A long stream; the engine is killed after its first chunk.
	body := `{"model":"` + c.ServedModelName + `","stream":true,"max_tokens":300,"messages":[{"role":"user","content":"go on"}]}`
	req, _ := http.NewRequest(http.MethodPost, c.BaseURL+"/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+aliceKey)
	sresp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	rd := bufio.NewReader(sresp.Body)
	first, err := rd.ReadString('\n')
	require.NoError(t, err)
	require.Contains(t, first, "data:")
	pids := pidsByComm(t, nodeNumber(t, c.HeadHost), "fakevllm")
	require.Len(t, pids, 1)
	require.NoError(t, exec.Command("kill", "-KILL", pids[0]).Run())
	var rest strings.Builder
	for {
		line, err := rd.ReadString('\n')
		rest.WriteString(line)
		if err != nil {
			break
		}
	}
	sresp.Body.Close()
	assert.Contains(t, rest.String(), `"code":"engine_failed"`, "a clean error event, not a cut connection")
	assert.True(t, strings.HasSuffix(rest.String(), "data: [DONE]\n\n"))

	// Until the engine is back: 503 with Retry-After, never a refused connection; then 200.
	var statuses []int
	deadline := time.Now().Add(readyTimeout)
	for time.Now().Before(deadline) {
		resp, err := (&http.Client{Timeout: 30 * time.Second}).Get(c.BaseURL + "/models")
		require.NoError(t, err, "the gateway keeps answering while the engine restarts")
		resp.Body.Close()
		req, _ := http.NewRequest(http.MethodGet, c.BaseURL+"/models", nil)
		req.Header.Set("Authorization", "Bearer "+bobKey)
		resp, err = http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		statuses = append(statuses, resp.StatusCode)
		if resp.StatusCode == http.StatusServiceUnavailable {
			assert.NotEmpty(t, resp.Header.Get("Retry-After"))
		}
		if resp.StatusCode == http.StatusOK {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	assert.Contains(t, statuses, http.StatusServiceUnavailable, "503 while restarting: %v", statuses)
	assert.Equal(t, http.StatusOK, statuses[len(statuses)-1], "200 once ready: %v", statuses)
	for _, s := range statuses {
		assert.Contains(t, []int{http.StatusServiceUnavailable, http.StatusOK}, s)
	}

	require.NoError(t, exec.Command("scancel", j.id).Run())
	j.waitState(jobfiles.StateStopped, drainBound)

	// The audit log and llm-agent usage show both keys, and never a key.
	audit, err := os.ReadFile(filepath.Join(j.stateDir, "audit.jsonl"))
	require.NoError(t, err)
	assert.Contains(t, string(audit), `"key":"alice"`)
	assert.Contains(t, string(audit), `"key":"bob"`)
	assert.Contains(t, string(audit), `"status":502`, "the cut stream is on record")
	assert.NotContains(t, string(audit), aliceKey)
	assert.NotContains(t, string(audit), "go on", "no prompt text")
	out, err := exec.Command(suite.agentBin, "usage", j.stateDir).CombinedOutput()
	require.NoError(t, err, string(out))
	assert.Contains(t, string(out), "alice")
	assert.Contains(t, string(out), "bob")
	assert.Contains(t, string(out), "climate")
	assert.Contains(t, string(out), "genomics")
	assert.NotContains(t, j.outputText(), aliceKey, "no key in the job output")
	requireNoProcesses(t, drainBound)
}

// TestKeyModelAccessAndRateLimits: a key limited to other models gets 404 for the served one,
// as if it did not exist; a key past its requests per minute gets 429 with Retry-After, and
// is served again once that time has passed.
func TestKeyModelAccessAndRateLimits(t *testing.T) {
	const carolKey, daveKey = "sk-carol-e2e-0123456789abcdef", "sk-dave-e2e-0123456789abcdef0"
	keys := filepath.Join(suite.work, "keys-"+strings.ReplaceAll(t.Name(), "/", "_")+".yaml")
	require.NoError(t, os.WriteFile(keys, []byte("keys:\n"+
		"  - {name: carol, project: p, key: "+carolKey+", models: [another-model]}\n"+
		"  - {name: dave, project: q, key: "+daveKey+", models: [tiny-test], requests_per_minute: 12}\n"), 0o600))
	j := submit(t, jobSpec{script: "singlenode.sbatch", sbatch: []string{"--gpus-per-node=2", "--cpus-per-task=1"},
		agent: []string{"--keys-file", keys}})
	c := j.waitState(jobfiles.StateReady, readyTimeout)
	require.Equal(t, "tiny-test", c.ServedModelName)

	resp, body := chat(t, c.BaseURL, carolKey, c.ServedModelName, false)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode, string(body))
	assert.Contains(t, string(body), "The model `tiny-test` does not exist.")
	req, _ := http.NewRequest(http.MethodGet, c.BaseURL+"/models", nil)
	req.Header.Set("Authorization", "Bearer "+carolKey)
	mresp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	var list struct {
		Data []any `json:"data"`
	}
	require.NoError(t, json.NewDecoder(mresp.Body).Decode(&list))
	mresp.Body.Close()
	assert.Empty(t, list.Data, "carol sees no model she may not use")

	for i := 0; i < 12; i++ {
		resp, body := chat(t, c.BaseURL, daveKey, c.ServedModelName, false)
		require.Equal(t, http.StatusOK, resp.StatusCode, "request %d: %s", i+1, body)
	}
	resp, body = chat(t, c.BaseURL, daveKey, c.ServedModelName, false)
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode, string(body))
	assert.Contains(t, string(body), "rate_limit_exceeded")
	retry, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	require.NoError(t, err)
	assert.True(t, retry >= 1 && retry <= 5, "12 a minute: one comes back every 5 s, less what came back meanwhile; Retry-After %d", retry)
	// Asking again and again is answered 429 (and costs nothing) until Retry-After has passed.
	throttledAt := time.Now()
	var servedAfter time.Duration
	require.True(t, assertEventually(time.Duration(retry+5)*time.Second, func() bool {
		resp, _ := chat(t, c.BaseURL, daveKey, c.ServedModelName, false)
		servedAfter = time.Since(throttledAt)
		return resp.StatusCode == http.StatusOK
	}), "dave is never served again")
	assert.InDelta(t, float64(retry), servedAfter.Seconds(), 1.0, "served again when Retry-After said")

	audit, err := os.ReadFile(filepath.Join(j.stateDir, "audit.jsonl"))
	require.NoError(t, err)
	assert.Contains(t, string(audit), `"status":429`)
	assert.Contains(t, string(audit), "rate limit: requests_per_minute")
	metrics := metricsText(t, c.Metrics[0].MetricsURL)
	throttled := metricFloat(t, metrics, `llm_agent_gateway_throttled_total{job="`+j.id+`",key="dave",limit="requests_per_minute",node="node1",project="q"}`)
	assert.GreaterOrEqual(t, throttled, 1.0)
	assert.Equal(t, throttled, metricFloat(t, metrics, `llm_agent_gateway_requests_total{code="429",endpoint="/v1/chat/completions",job="`+j.id+`",key="dave",node="node1",project="q"}`),
		"every 429 of dave's was his own limit")
}
