//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// TestTwoModels serves two models from one job of three nodes, placed by a models file: alpha
// on two replicas, beta on one with its own vLLM arguments. The head's gateway routes each
// request by its model, lists both, and a key limited to alpha gets 404 for beta.
func TestTwoModels(t *testing.T) {
	dir, err := os.MkdirTemp(suite.work, "models-")
	require.NoError(t, err)
	for _, m := range []string{"alpha-model", "beta-model"} {
		require.NoError(t, os.MkdirAll(filepath.Join(dir, m), 0o755))
	}
	models := filepath.Join(dir, "models.yaml")
	require.NoError(t, os.WriteFile(models, []byte(fmt.Sprintf(`models:
  - model: %s/alpha-model
    served_model_name: alpha
    replicas: 2
  - model: %s/beta-model
    served_model_name: beta
    vllm_args: [--max-num-seqs, "2"]
`, dir, dir)), 0o644))
	keys := filepath.Join(dir, "keys.yaml")
	require.NoError(t, os.WriteFile(keys, []byte("keys:\n  - {name: alice, project: climate, key: "+aliceKey+", models: [alpha]}\n"+
		"  - {name: bob, project: genomics, sha256: "+sha256hex(bobKey)+"}\n"), 0o600))
	j := submit(t, jobSpec{script: "multinode.sbatch", sbatch: []string{"-N", "3", "--gpus-per-node=1", "--cpus-per-task=1"},
		noModel: true, agent: []string{"--models-file", models, "--keys-file", keys}})
	c := j.waitState(jobfiles.StateReady, readyTimeout)
	want := map[string]string{"node1": "ready", "node2": "ready", "node3": "ready"}
	require.True(t, assertEventually(readyTimeout, func() bool { return fmt.Sprint(replicaStates(j)) == fmt.Sprint(want) }),
		"every replica ready: %v", replicaStates(j))
	c, ok := j.conn()
	require.True(t, ok)
	require.Len(t, c.Models, 2)
	assert.Equal(t, []string{"node1", "node2"}, c.Models[0].Nodes)
	assert.Equal(t, []string{"node3"}, c.Models[1].Nodes)
	assert.Equal(t, "alpha", c.ServedModelName, "the head's model")
	for _, r := range c.Replicas {
		assert.Equal(t, map[string]string{"node1": "alpha", "node2": "alpha", "node3": "beta"}[r.Node], r.Model, "replica %s", r.Node)
	}

	// Each model's requests reach its own replicas only.
	seen := map[string]map[string]int{"alpha": {}, "beta": {}}
	for range 12 {
		for _, model := range []string{"alpha", "beta"} {
			resp, body := chat(t, c.BaseURL, bobKey, model, false)
			require.Equal(t, http.StatusOK, resp.StatusCode, "%s: %s", model, body)
			var out struct {
				Model string `json:"model"`
			}
			require.NoError(t, json.Unmarshal(body, &out))
			assert.Equal(t, model, out.Model, "the engine that answered serves the model asked for")
			seen[model][resp.Header.Get("X-Llm-Agent-Replica")]++
		}
	}
	assert.Equal(t, []string{"node1", "node2"}, keysOf(seen["alpha"]), "alpha on its two replicas: %v", seen)
	assert.Equal(t, []string{"node3"}, keysOf(seen["beta"]), "beta on its own: %v", seen)
	resp, body := chat(t, c.BaseURL, bobKey, "gamma", false)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode, string(body))

	// One list of both models; a key limited to alpha sees alpha only, and beta does not exist
	// for it.
	assert.Equal(t, []string{"alpha", "beta"}, listModels(t, c.BaseURL, bobKey))
	assert.Equal(t, []string{"alpha"}, listModels(t, c.BaseURL, aliceKey))
	resp, _ = chat(t, c.BaseURL, aliceKey, "alpha", false)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	resp, forbidden := chat(t, c.BaseURL, aliceKey, "beta", false)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	_, absent := chat(t, c.BaseURL, aliceKey, "gamma", false)
	assert.Equal(t, strings.ReplaceAll(string(absent), "gamma", "beta"), string(forbidden), "beta looks absent to alice's key")

	// beta's replica runs with its own arguments, and the status names each model.
	pids := pidsByComm(t, 3, "fakevllm")
	require.Len(t, pids, 1)
	cmdline, err := os.ReadFile("/proc/" + pids[0] + "/cmdline")
	require.NoError(t, err)
	args := strings.ReplaceAll(string(cmdline), "\x00", " ")
	assert.Contains(t, args, "--max-num-seqs 2")
	assert.Contains(t, args, "--served-model-name beta")
	out, err := exec.Command(suite.agentBin, "status", j.stateDir).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "model beta")
	assert.Contains(t, string(out), "replica node3")
	text := metricsText(t, c.Metrics[0].MetricsURL)
	var v string
	v, ok = metricValue(text, `llm_agent_gateway_replica_up{job="`+j.id+`",model="beta",node="node1",replica="node3"}`)
	assert.True(t, ok && v == "1", "beta's replica up in the metrics: %q", v)

	// Each replica's engine metrics, on its own node, named by its model.
	require.Len(t, c.Metrics, 3)
	for _, m := range c.Metrics {
		require.NotEmpty(t, m.EngineMetricsURL, "node %s", m.Node)
		want := map[string]string{"node1": "alpha", "node2": "alpha", "node3": "beta"}[m.Node]
		assert.Contains(t, metricsText(t, m.EngineMetricsURL), `model_name="`+want+`"`, "node %s", m.Node)
	}
	require.NoError(t, exec.Command("scancel", j.id).Run())
	j.waitState(jobfiles.StateStopped, drainBound)
	requireNoProcesses(t, drainBound)
}

func keysOf(m map[string]int) []string {
	var out []string
	for _, n := range []string{"node1", "node2", "node3"} {
		if m[n] > 0 {
			out = append(out, n)
		}
	}
	return out
}

func listModels(t *testing.T, baseURL, key string) []string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, baseURL+"/models", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(b))
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	require.NoError(t, json.Unmarshal(b, &list))
	var ids []string
	for _, m := range list.Data {
		ids = append(ids, m.ID)
	}
	return ids
}
