package agent

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/agent/gateway"
	"github.com/llm-agent/llm-agent/agent/layout"
	"github.com/llm-agent/llm-agent/clients/lora"
	"github.com/llm-agent/llm-agent/jobfiles"
)

func writeModelsFile(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "models.yaml")
	require.NoError(t, os.WriteFile(path, []byte(body), 0o600))
	return path
}

// TestPrepareServesThisNodesModel: each node takes the configuration of the model placed on it.
func TestPrepareServesThisNodesModel(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	a, b := t.TempDir(), t.TempDir()
	cfg.Model, cfg.ServedModelName = "", ""
	cfg.VLLMArgs = []string{"--seed", "7"}
	cfg.ModelsFile = writeModelsFile(t, "models:\n  - {model: "+a+", served_model_name: alpha, replicas: 2}\n  - {model: "+b+", served_model_name: beta, vllm_args: [--max-num-seqs, '4']}\n")
	env := func(id string) map[string]string {
		return map[string]string{"SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "node[1-3]", "SLURM_NODEID": id}
	}
	w, err := prepare(t.Context(), cfg, testDeps(t, env("2"), "node3"))
	require.NoError(t, err)
	assert.Equal(t, b, w.Cfg.Model)
	assert.Equal(t, "beta", w.Cfg.ServedName())
	assert.Equal(t, []string{"--seed", "7", "--max-num-seqs", "4"}, w.Cfg.VLLMArgs)
	assert.Equal(t, 3, w.Replicas.Count)
	assert.True(t, w.Replicated())

	deps := testDeps(t, env("0"), "node1")
	log, buf := testLogger(t)
	deps.Logger = log
	h, err := prepare(t.Context(), cfg, deps)
	require.NoError(t, err)
	assert.Equal(t, "alpha", h.Cfg.ServedName())
	assert.Regexp(t, `model placed: .* name=alpha model=`+regexp.QuoteMeta(a)+` nodes="node1,node2"`, buf.String())
	assert.Regexp(t, `model placed: .* name=beta model=`+regexp.QuoteMeta(b)+` nodes=node3`, buf.String())
	assert.NotContains(t, buf.String(), "--model given more than once", "a models file says it all")

	// --model twice: two models, which the head's log says, for a wrapper's default --model.
	two := cfg
	two.ModelsFile, two.Model, two.MoreModels = "", a, []string{b}
	log, buf = testLogger(t)
	deps.Logger = log
	_, err = prepare(t.Context(), two, deps)
	require.NoError(t, err)
	assert.Contains(t, buf.String(), "several models, from --model given more than once")
	assert.Regexp(t, `model placed: .* name=`+filepath.Base(b)+` model=`+regexp.QuoteMeta(b)+` nodes=node3`, buf.String())
	assert.Equal(t, map[string]int{"alpha": 1, "beta": 1}, h.Tensors)
	name, lora := h.ModelOf("node3")
	assert.Equal(t, "beta", name)
	assert.False(t, lora)

	cfg.ModelsFile = writeModelsFile(t, "models:\n  - {model: /nonexistent/alpha}\n  - {model: "+b+"}\n")
	_, err = prepare(t.Context(), cfg, testDeps(t, env("0"), "node1"))
	assert.ErrorIs(t, err, ErrBadInput, "the head checks every model's directory")
	assert.ErrorContains(t, err, "/nonexistent/alpha")
}

// TestPrepareChoosesReplicas: a model that fits on one node of several runs as one replica per
// node, on as many of its GPUs as it fits on; --replicas 1 keeps one engine.
func TestPrepareChoosesReplicas(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.Model = "plan/testdata/models/llama-3.1-8b"
	cfg.GPUMemory = "80GB"
	env := map[string]string{"SLURM_JOB_ID": "78", "SLURM_JOB_NODELIST": "g[1-2]", "SLURM_NODEID": "0",
		"SLURM_GPUS_ON_NODE": "4", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
	a, err := prepare(t.Context(), cfg, testDeps(t, env, "g1"))
	require.NoError(t, err)
	assert.Equal(t, 2, a.Replicas.Count)
	assert.Equal(t, layout.Parallelism{Tensor: 4, Pipeline: 1}, a.Par)

	// 10 KV heads: tensor 4 would split them, so two replicas of two GPUs share each node.
	cfg.Model = "plan/testdata/models/phi-3-medium-gqa"
	a, err = prepare(t.Context(), cfg, testDeps(t, env, "g1"))
	require.NoError(t, err)
	assert.Equal(t, 4, a.Replicas.Count)
	assert.Equal(t, 2, a.PerNode())
	assert.Equal(t, layout.Parallelism{Tensor: 2, Pipeline: 1}, a.Par)
	assert.Equal(t, []string{"2", "3"}, a.SlotGPUs(1))
	assert.Equal(t, "g2/1", a.ReplicaName("g2", 1))

	cfg.Model = "plan/testdata/models/llama-3.1-8b"
	cfg.Replicas = 1
	a, err = prepare(t.Context(), cfg, testDeps(t, env, "g1"))
	require.NoError(t, err)
	assert.Equal(t, 1, a.Replicas.Count)
	assert.Equal(t, layout.Parallelism{Tensor: 1, Pipeline: 1}, a.Par)

	// A model that does not fit on one node is refused as a replica, with the reason.
	cfg.Replicas, cfg.GPUMemory = 2, "4GB"
	_, err = prepare(t.Context(), cfg, testDeps(t, env, "g1"))
	assert.ErrorIs(t, err, ErrBadInput)
	assert.ErrorContains(t, err, "replicas whose model spans nodes are not supported")
}

// TestRunTwoModels serves two models from two nodes: the head's gateway routes each request by
// its model, and lists both.
func TestRunTwoModels(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("FAKE_RAY_DIR", t.TempDir())
	cfg := testConfig(t, dir)
	cfg.Model, cfg.ServedModelName = "", ""
	sql, chat := testAdapter(t, 8), testAdapter(t, 8)
	cfg.ModelsFile = writeModelsFile(t, "models:\n  - {model: "+t.TempDir()+", served_model_name: alpha}\n  - {model: "+t.TempDir()+", served_model_name: beta, lora: [sql="+sql+"]}\n")
	runs := startNodes(t, cfg, "4747", 2, nil)
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			stopNodes(t, runs)
		}
	})
	c := waitConnState(t, dir, jobfiles.StateReady, 30*time.Second)
	require.Len(t, c.Models, 2)
	assert.Equal(t, []string{"node2"}, c.Models[1].Nodes)
	require.Eventually(t, func() bool {
		c, _ := jobfiles.ReadConnection(filepath.Join(dir, jobfiles.ConnectionFile))
		return len(c.Replicas) == 2 && c.Replicas[1].State == "ready" && c.Replicas[1].Model == "beta"
	}, 30*time.Second, 20*time.Millisecond)
	key, err := os.ReadFile(c.APIKeyFile)
	require.NoError(t, err)
	ask := func(model string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, c.BaseURL+"/completions", strings.NewReader(`{"model":"`+model+`","prompt":"hi","max_tokens":2}`))
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(key)))
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get(gateway.ReplicaHeader)
	}
	for range 5 {
		code, node := ask("alpha")
		assert.Equal(t, http.StatusOK, code)
		assert.Equal(t, "node1", node)
		code, node = ask("beta")
		assert.Equal(t, http.StatusOK, code)
		assert.Equal(t, "node2", node)
	}
	code, _ := ask("gamma")
	assert.Equal(t, http.StatusNotFound, code, "no such model: beta's engine, which serves the adapters, says so")

	// beta serves adapters from node2: the head's gateway and connection file speak for it.
	assert.Equal(t, 8, c.LoRAMaxRank)
	assert.Equal(t, []jobfiles.Adapter{{Name: "sql", Path: sql}}, c.Adapters)
	require.NotEmpty(t, c.OwnerKeyFile)
	require.NoError(t, lora.Add(context.Background(), lora.Options{Job: dir, Name: "chat", Path: chat, Out: io.Discard}))
	c = waitConnState(t, dir, jobfiles.StateReady, time.Second)
	assert.Equal(t, []jobfiles.Adapter{{Name: "sql", Path: sql}, {Name: "chat", Path: chat}}, c.Adapters)
	req, _ := http.NewRequest(http.MethodGet, c.BaseURL+"/models", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(key)))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.JSONEq(t, `{"object":"list","data":[{"id":"alpha"},{"id":"beta"}]}`, string(b))
	stopped = true
	for _, err := range stopNodes(t, runs) {
		require.NoError(t, err)
	}
	assertNoChildren(t)
}
