package agent

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/status"
	"github.com/llm-agent/llm-agent/jobfiles"
)

func getWithKey(t *testing.T, url, key string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestRunGatewayWithKeysFile(t *testing.T) {
	dir := t.TempDir()
	keys := filepath.Join(t.TempDir(), "keys.yaml")
	require.NoError(t, os.WriteFile(keys, []byte("keys:\n  - {name: alice, project: climate, key: sk-alice-0123456789abcdef}\n  - {name: bob, project: genomics, key: sk-bob-0123456789abcdef01}\n"), 0o600))
	cfg := testConfig(t, dir)
	cfg.KeysFile = keys
	run := startAgent(cfg, testDeps(t, map[string]string{}, "laptop"))
	c := waitConnState(t, dir, jobfiles.StateReady, 20*time.Second)
	assert.Empty(t, c.APIKeyFile, "clients bring their own keys")
	assert.Equal(t, keys, c.KeysFile)
	env, err := os.ReadFile(c.EnvFile)
	require.NoError(t, err)
	assert.NotContains(t, string(env), "OPENAI_API_KEY=")
	for _, key := range []string{"sk-alice-0123456789abcdef", "sk-bob-0123456789abcdef01"} {
		code, body := getWithKey(t, c.BaseURL+"/models", key)
		assert.Equal(t, 200, code, body)
		assert.Contains(t, body, `"tiny"`)
	}
	code, _ := getWithKey(t, c.BaseURL+"/models", "")
	assert.Equal(t, 401, code)
	root := strings.TrimSuffix(c.BaseURL, "/v1")
	code, _ = getWithKey(t, root+"/metrics", "sk-alice-0123456789abcdef")
	assert.Equal(t, 404, code, "the engine's /metrics is not on the public port")
	code, _ = getWithKey(t, root+"/readyz", "")
	assert.Equal(t, 200, code)
	_, metrics := getWithKey(t, c.Metrics[0].MetricsURL, "")
	assert.Contains(t, metrics, `llm_agent_gateway_requests_total{code="200",endpoint="/v1/models",job="`+c.JobID+`",key="alice",node="laptop",project="climate"} 1`)
	require.NoError(t, run.stop(t))
	b, err := os.ReadFile(filepath.Join(dir, "audit.jsonl"))
	require.NoError(t, err)
	assert.Equal(t, 2, strings.Count(string(b), "\n"), "one line per authenticated request")
	assert.NotContains(t, string(b), "sk-alice")
	rep, err := status.Usage(filepath.Join(dir, jobfiles.ConnectionFile), 100, time.Now())
	require.NoError(t, err)
	require.Len(t, rep.Keys, 2)
	assertNoChildren(t)
}

func TestRunPlainTopology(t *testing.T) {
	dir := t.TempDir()
	argsFile := filepath.Join(t.TempDir(), "args")
	t.Setenv("FAKE_VLLM_ARGS", argsFile)
	cfg := testConfig(t, dir)
	cfg.Gateway = false
	run := startAgent(cfg, testDeps(t, map[string]string{}, "laptop"))
	c := waitConnState(t, dir, jobfiles.StateReady, 20*time.Second)
	assert.False(t, c.Gateway)
	b, _ := os.ReadFile(argsFile)
	assert.Contains(t, string(b), fmt.Sprintf("--host\n0.0.0.0\n--port\n%d\n", c.Port), "vLLM holds the public port")
	key, _ := os.ReadFile(c.APIKeyFile)
	code, _ := getWithKey(t, c.BaseURL+"/models", strings.TrimSpace(string(key)))
	assert.Equal(t, 200, code)
	require.NoError(t, run.stop(t))

	cfg.KeysFile = filepath.Join(t.TempDir(), "keys.yaml")
	err := Run(context.Background(), cfg, testDeps(t, map[string]string{}, "laptop"))
	assert.ErrorIs(t, err, config.ErrInvalid)
	assert.ErrorContains(t, err, "--keys-file needs the gateway")
}

func TestRunRejectsAnOpenKeysFile(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "keys.yaml")
	require.NoError(t, os.WriteFile(keys, []byte("keys:\n  - {name: a, key: sk-aaaaaaaaaaaaaaaaaaaa}\n"), 0o644))
	cfg := testConfig(t, t.TempDir())
	cfg.KeysFile = keys
	err := Run(context.Background(), cfg, testDeps(t, map[string]string{}, "laptop"))
	assert.ErrorIs(t, err, config.ErrInvalid)
	assert.ErrorContains(t, err, "chmod 600")
	cfg.KeysFile, cfg.MaxRequestBody = "", "lots"
	err = Run(context.Background(), cfg, testDeps(t, map[string]string{}, "laptop"))
	assert.ErrorContains(t, err, "--max-request-body")
	assertNoChildren(t)
}
