package agent

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/agent/config"
	loraplan "github.com/llm-agent/llm-agent/agent/lora"
	"github.com/llm-agent/llm-agent/agent/node"
	"github.com/llm-agent/llm-agent/clients/lora"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/vllm"
)

// testAdapter makes a LoRA adapter directory of rank r.
func testAdapter(t *testing.T, r int) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "adapter_config.json"), []byte(`{"peft_type":"LORA","r":`+strconv.Itoa(r)+`}`), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "adapter_model.safetensors"), []byte("x"), 0o644))
	return dir
}

func TestRunRefusesABadAdapter(t *testing.T) {
	for _, tt := range []struct {
		name  string
		lora  []string
		extra []string
		want  string
	}{
		{"missing", []string{"a=/nonexistent/adapter"}, nil, "adapter_config.json"},
		{"rank above the user's --max-lora-rank", []string{"a=" + testAdapter(t, 32)}, []string{"--max-lora-rank", "16"}, "below the rank of an adapter (32)"},
		{"--lora-modules given through", nil, []string{"--lora-modules", "a=/p"}, "--lora NAME=PATH"},
	} {
		cfg := testConfig(t, t.TempDir())
		cfg.LoRA, cfg.VLLMArgs = tt.lora, tt.extra
		err := Run(context.Background(), cfg, testDeps(t, map[string]string{}, "laptop"))
		assert.ErrorContains(t, err, tt.want, tt.name)
		assert.True(t, errors.Is(err, ErrBadInput) || errors.Is(err, config.ErrInvalid), "%s: exit 2: %v", tt.name, err)
	}
	assertNoChildren(t)
}

func TestRunServesLoRAAdapters(t *testing.T) {
	dir := t.TempDir()
	argsFile := filepath.Join(t.TempDir(), "args")
	t.Setenv("FAKE_VLLM_ARGS", argsFile)
	sql, chat := testAdapter(t, 12), testAdapter(t, 8)
	cfg := testConfig(t, dir)
	cfg.LoRA = []string{"sql=" + sql}
	run := startAgent(cfg, testDeps(t, map[string]string{}, "laptop"))
	c := waitConnState(t, dir, jobfiles.StateReady, 20*time.Second)

	args, _ := os.ReadFile(argsFile)
	module := `{"name":"sql","path":` + strconv.Quote(sql) + `,"base_model_name":"tiny"}`
	assert.Contains(t, string(args), "--enable-lora\n--max-lora-rank\n16\n--lora-modules\n"+module, "rank 12 needs vLLM's 16")
	assert.Equal(t, 16, c.LoRAMaxRank)
	assert.Equal(t, []jobfiles.Adapter{{Name: "sql", Path: sql}}, c.Adapters)
	require.NotEmpty(t, c.OwnerKeyFile)
	fi, err := os.Stat(c.OwnerKeyFile)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	owner, _ := os.ReadFile(c.OwnerKeyFile)
	client, _ := os.ReadFile(c.APIKeyFile)
	assert.NotEqual(t, strings.TrimSpace(string(owner)), strings.TrimSpace(string(client)))

	// The owner adds an adapter at run time; a restarted engine starts with it.
	o := lora.Options{Job: dir, Name: "chat", Path: chat, Out: io.Discard}
	require.NoError(t, lora.Add(context.Background(), o))
	c = waitConnState(t, dir, jobfiles.StateReady, time.Second)
	assert.Equal(t, []jobfiles.Adapter{{Name: "sql", Path: sql}, {Name: "chat", Path: chat}}, c.Adapters)
	b, err := os.ReadFile(argsFile + ".pid")
	require.NoError(t, err)
	pid, _ := strconv.Atoi(string(b))
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	waitConnState(t, dir, jobfiles.StateRestarting, 10*time.Second)
	waitConnState(t, dir, jobfiles.StateReady, 20*time.Second)
	args, _ = os.ReadFile(argsFile)
	assert.Contains(t, string(args), `{"name":"chat","path":"`+chat+`","base_model_name":"tiny"}`, "the restarted engine serves the adapter added at run time")

	o.Name = "sql"
	require.NoError(t, lora.Remove(context.Background(), o))
	c = waitConnState(t, dir, jobfiles.StateReady, time.Second)
	assert.Equal(t, []jobfiles.Adapter{{Name: "chat", Path: chat}}, c.Adapters)
	require.NoError(t, run.stop(t))
	assertNoChildren(t)
}

func TestLoRAWithoutAdaptersAtStart(t *testing.T) {
	a := &node.Env{Cfg: config.Config{Model: "/m/tiny", VLLMArgs: []string{"--enable-lora"}}}
	require.NoError(t, prepareLoRA(a))
	assert.True(t, a.LoRA.On())
	assert.Equal(t, vllm.DefaultMaxLoRARank, a.LoRA.MaxRank(), "vLLM's own default")
	a.Cfg.VLLMArgs = []string{"--enable-lora", "--max-lora-rank", "64"}
	require.NoError(t, prepareLoRA(a))
	assert.Equal(t, 64, a.LoRA.MaxRank(), "the user's own")
	a.Cfg.VLLMArgs = nil
	require.NoError(t, prepareLoRA(a))
	assert.False(t, a.LoRA.On())
	assert.Equal(t, vllm.ServeSpec{Model: "m"}, a.LoRA.Spec(vllm.ServeSpec{Model: "m"}), "no LoRA options")
	var none *loraplan.Plan
	assert.False(t, none.On())
	assert.Nil(t, none.List())
}

// TestReplicaKeepsRuntimeAdapters: an adapter the owner adds at run time reaches every replica,
// and a worker's replica restarted afterwards starts with it.
func TestReplicaKeepsRuntimeAdapters(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("FAKE_RAY_DIR", t.TempDir())
	chat := testAdapter(t, 8)
	cfg := testConfig(t, dir)
	cfg.Replicas = 2
	cfg.VLLMArgs = []string{"--enable-lora"}
	cfg.BackoffInitial, cfg.BackoffMax = time.Second, time.Second
	runs := startNodes(t, cfg, "4848", 2, nil)
	t.Cleanup(func() { stopNodes(t, runs) })
	waitConnState(t, dir, jobfiles.StateReady, 30*time.Second)
	replicas := func() []jobfiles.Replica {
		c, _ := jobfiles.ReadConnection(filepath.Join(dir, jobfiles.ConnectionFile))
		return c.Replicas
	}
	require.Eventually(t, func() bool { r := replicas(); return len(r) == 2 && r[1].State == "ready" }, 30*time.Second, 20*time.Millisecond)
	require.NoError(t, lora.Add(context.Background(), lora.Options{Job: dir, Name: "chat", Path: chat, Out: io.Discard}))

	c, _ := jobfiles.ReadConnection(filepath.Join(dir, jobfiles.ConnectionFile))
	pid := engineNotOn(t, c.EngineSocket)
	require.NotZero(t, pid, "node2's engine")
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	require.Eventually(t, func() bool { r := replicas(); return len(r) == 2 && r[1].Restarts == 1 && r[1].State == "ready" },
		30*time.Second, 20*time.Millisecond, "node2's engine restarted: %+v", replicas())
	pid = engineNotOn(t, c.EngineSocket)
	require.NotZero(t, pid)
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	require.NoError(t, err)
	assert.Contains(t, string(cmdline), `{"name":"chat","path":"`+chat+`","base_model_name":"tiny"}`,
		"node2's restarted engine serves the adapter added at run time")
}
