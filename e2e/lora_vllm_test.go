//go:build e2evllm

package e2e

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// tinyLoRA makes a LoRA adapter of rank r for the tiny model in dir.
func tinyLoRA(t *testing.T, dir string, r string, seed string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(suite.venv, "bin", "python"), filepath.Join(suite.root, "e2e", "make-tiny-lora.py"),
		tiny(t), dir, "--rank", r, "--seed", seed).CombinedOutput()
	require.NoError(t, err, "make-tiny-lora.py: %s", out)
	return dir
}

// TestRealVLLMLoRAAdapters serves a LoRA adapter with the CPU build of vLLM, adds and removes
// another while it runs with `llm-agent lora`, and checks that no client key reaches the routes
// that load them.
func TestRealVLLMLoRAAdapters(t *testing.T) {
	work, err := os.MkdirTemp(suite.work, "lora-") // the nodes see the shared work directory, not this /tmp
	require.NoError(t, err)
	sql := tinyLoRA(t, filepath.Join(work, "sql"), "8", "1")
	chat := tinyLoRA(t, filepath.Join(work, "chat"), "8", "2")
	big := tinyLoRA(t, filepath.Join(work, "big"), "32", "3")
	// With LoRA, vLLM's CPU build runs the model eagerly (no torch.compile). Eagerly, in
	// bfloat16 (its default on this CPU), its attention kernel takes the AMX path and the worker
	// dies of an illegal instruction on the first request, LoRA or not (so does --enforce-eager
	// alone); in float32 it takes the AVX-512 path and serves.
	j := submit(t, vllmJob(t, "singlenode.sbatch", []string{"--gpus-per-node=2", "--cpus-per-task=1"}, 1, 1, "--lora", "sql="+sql,
		"--vllm-arg=--dtype", "--vllm-arg=float32"))
	c := j.waitState(jobfiles.StateReady, vllmReadyTimeout)
	key := j.apiKey(c)
	assert.Equal(t, 8, c.LoRAMaxRank, "sized from the adapter's rank")

	models := func() map[string]string {
		req, _ := http.NewRequest(http.MethodGet, c.BaseURL+"/models", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
		require.NoError(t, err)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		code, body := resp.StatusCode, string(b)
		require.Equal(t, 200, code, body)
		var doc struct {
			Data []struct {
				ID     string `json:"id"`
				Parent string `json:"parent"`
			} `json:"data"`
		}
		require.NoError(t, json.Unmarshal([]byte(body), &doc))
		out := map[string]string{}
		for _, m := range doc.Data {
			out[m.ID] = m.Parent
		}
		return out
	}
	say := func(model string) (int, string) {
		code, body := completion(t, c, key, "/completions", `{"model":"`+model+`","prompt":"hello cluster","max_tokens":8,"temperature":0}`)
		if code != 200 {
			return code, body
		}
		var doc struct {
			Choices []struct {
				Text string `json:"text"`
			} `json:"choices"`
		}
		require.NoError(t, json.Unmarshal([]byte(body), &doc), body)
		require.Len(t, doc.Choices, 1)
		return code, doc.Choices[0].Text
	}
	assert.Equal(t, map[string]string{"tiny": "", "sql": "tiny"}, models())
	code, base := say("tiny")
	require.Equal(t, 200, code, base)
	code, withSQL := say("sql")
	require.Equal(t, 200, code, withSQL)
	assert.NotEqual(t, base, withSQL, "the adapter changes what the model says: it served the request")

	// A client key cannot load an adapter: the route does not exist for it.
	code, body := completion(t, c, key, "/load_lora_adapter", `{"lora_name":"x","lora_path":"`+chat+`"}`)
	assert.Equal(t, 404, code)
	assert.Equal(t, `{"detail":"Not Found"}`, body)

	lora := func(args ...string) (int, string) {
		out, err := exec.Command(suite.agentBin, append([]string{"lora"}, args...)...).CombinedOutput()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode(), string(out)
		}
		require.NoError(t, err)
		return 0, string(out)
	}
	rc, out := lora("add", j.stateDir, "chat", chat)
	require.Equal(t, 0, rc, out)
	assert.Contains(t, out, "serves adapter chat (rank 8")
	assert.Equal(t, map[string]string{"tiny": "", "sql": "tiny", "chat": "tiny"}, models())
	code, withChat := say("chat")
	require.Equal(t, 200, code, withChat)
	assert.NotEqual(t, withSQL, withChat, "each adapter its own")
	c, _ = j.conn()
	assert.Equal(t, []jobfiles.Adapter{{Name: "sql", Path: sql}, {Name: "chat", Path: chat}}, c.Adapters)

	rc, out = lora("add", j.stateDir, "big", big)
	assert.Equal(t, 2, rc, out)
	assert.Contains(t, out, "above the job's --max-lora-rank 8")
	rc, out = lora("remove", j.stateDir, "chat")
	require.Equal(t, 0, rc, out)
	code, body = say("chat")
	assert.Equal(t, 404, code, body)
	assert.Equal(t, map[string]string{"tiny": "", "sql": "tiny"}, models())
	rc, out = lora("remove", j.stateDir, "chat")
	assert.Equal(t, 2, rc, out)
	assert.Contains(t, out, "serves no adapter \"chat\" (it serves: sql)")
	assert.NotContains(t, strings.ToLower(j.outputText()), strings.ToLower(key))

	require.NoError(t, exec.Command("scancel", j.id).Run())
	j.waitState(jobfiles.StateStopped, drainBound)
	requireNoProcesses(t, drainBound)
	j.waitEnded(drainBound)
}
