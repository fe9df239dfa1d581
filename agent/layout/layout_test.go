package layout

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/plan"
)

func writeModelsFile(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "models.yaml")
	require.NoError(t, os.WriteFile(path, []byte(body), 0o600))
	return path
}

func TestPlaceModels(t *testing.T) {
	c := config.Default()
	c.VLLMArgs = []string{"--max-model-len", "4096", "--seed", "1"}
	c.ModelsFile = writeModelsFile(t, `models:
  - model: /m/llama
    served_model_name: chat
    replicas: 2
    vllm_args: [--max-model-len, "8192"]
  - model: /m/embed
  - model: org/coder
    lora: [sql=/l/sql]
`)
	entries, err := c.ModelEntries()
	require.NoError(t, err)
	nodes := []string{"n1", "n2", "n3", "n4", "n5"}
	places, err := PlaceModels(c, entries, nodes)
	require.NoError(t, err)
	require.Len(t, places, 3)
	assert.Equal(t, "chat", places[0].Name)
	assert.Equal(t, []string{"n1", "n2"}, places[0].Nodes)
	assert.Equal(t, []string{"--seed", "1", "--max-model-len", "8192"}, places[0].Config.VLLMArgs, "the entry's arguments win")
	assert.Equal(t, "embed", places[1].Name)
	assert.Equal(t, []string{"n3", "n4"}, places[1].Nodes, "the nodes left are shared, the first model one more")
	assert.Equal(t, "org/coder", places[2].Name)
	assert.Equal(t, []string{"n5"}, places[2].Nodes)
	assert.True(t, places[2].LoRA)
	assert.Equal(t, []string{"sql=/l/sql"}, places[2].Config.LoRA)

	_, err = PlaceModels(c, entries, nodes[:3])
	assert.ErrorIs(t, err, config.ErrBadInput)
	assert.ErrorContains(t, err, "the models need 4 nodes, one per replica (chat: 2, embed: at least 1, org/coder: at least 1), and this job has 3")
}

func TestChooseParallelism(t *testing.T) {
	tests := []struct {
		name                string
		tp, pp, nodes, gpus int
		wantTP, wantPP      int
		err                 string
	}{
		{"defaults: GPUs per node by nodes", 0, 0, 3, 4, 4, 3, ""},
		{"single node", 0, 0, 1, 8, 8, 1, ""},
		{"explicit smaller tensor parallel", 2, 0, 2, 4, 2, 2, ""},
		{"pipeline within one node", 2, 2, 1, 4, 2, 2, ""},
		{"no GPUs: CPU engine", 0, 0, 2, 0, 1, 2, ""},
		{"no GPUs but tensor parallel", 2, 0, 1, 0, 0, 0, "needs GPUs"},
		{"tensor parallel across nodes", 8, 0, 2, 4, 0, 0, "tensor parallel 8 exceeds the 4 GPUs of a node"},
		{"more GPUs than the allocation", 4, 3, 2, 4, 0, 0, "= 12 GPUs, but the allocation has 2 nodes x 4 GPUs = 8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ChooseParallelism(tt.tp, tt.pp, tt.nodes, tt.gpus)
			if tt.err != "" {
				assert.ErrorIs(t, err, config.ErrInvalid)
				assert.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, Parallelism{Tensor: tt.wantTP, Pipeline: tt.wantPP}, p)
		})
	}
}

func TestPlanForReadsNVMLWhenNoMemoryGiven(t *testing.T) {
	env := Env{Getenv: func(string) string { return "" }}
	_, err := PlanFor(PlanOptions{Model: "../plan/testdata/models/llama-3.1-8b", Nodes: 1, GPUsPerNode: 1}, env)
	assert.ErrorIs(t, err, plan.ErrRequest, "no NVML and no --gpu-memory")
	_, err = PlanFor(PlanOptions{Model: "../plan/testdata/models/no-config", Nodes: 1, GPUsPerNode: 1, GPUMemory: "80GB"}, env)
	assert.ErrorIs(t, err, plan.ErrModel)
	_, err = PlanFor(PlanOptions{Model: "../plan/testdata/models/llama-3.1-8b", Nodes: 1, GPUsPerNode: 1, GPUMemory: "huge"}, env)
	assert.ErrorIs(t, err, plan.ErrRequest)
}

func TestPlanForWithNVML(t *testing.T) {
	env := Env{Getenv: func(string) string { return "" }}
	env.NVML = dgxh100.New()
	p, err := PlanFor(PlanOptions{Model: "../plan/testdata/models/llama-3.1-70b", Nodes: 1, GPUsPerNode: 8, Visible: []string{"0"}, InJob: true}, env)
	require.NoError(t, err)
	assert.Greater(t, p.Request.GPUMemory, int64(80e9), "an H100's memory, from the mock NVML")
	assert.Equal(t, 4, p.Chosen.Tensor)
	_, err = PlanFor(PlanOptions{Model: "../plan/testdata/models/llama-3.1-70b", Nodes: 1, GPUsPerNode: 8, InJob: true}, env)
	assert.ErrorContains(t, err, "no GPU", "a job without visible GPUs has no memory to plan with")
}

// TestPlacements: the rendezvous and the connection file list each model with its tensor size.
func TestPlacements(t *testing.T) {
	places := []ModelPlace{{Name: "chat", Model: "/m/llama", Nodes: []string{"n1", "n2"}}, {Name: "coder", Model: "/m/c", Nodes: []string{"n3"}, LoRA: true}}
	got := Placements(places, map[string]int{"chat": 4, "coder": 2})
	require.Len(t, got, 2)
	assert.Equal(t, "chat", got[0].Name)
	assert.Equal(t, []string{"n1", "n2"}, got[0].Nodes)
	assert.Equal(t, 4, got[0].Tensor)
	assert.Equal(t, 2, got[1].Tensor)
	assert.True(t, got[1].LoRA)
}

// TestLoadPresets: the shipped presets, a file of the user's, and a file that is not there.
func TestLoadPresets(t *testing.T) {
	shipped, err := LoadPresets("")
	require.NoError(t, err)
	assert.NotEmpty(t, shipped)
	path := filepath.Join(t.TempDir(), "presets.yaml")
	require.NoError(t, os.WriteFile(path, []byte("# none\n"), 0o600))
	_, err = LoadPresets(path)
	assert.ErrorIs(t, err, plan.ErrPreset, "a file that defines no presets")
	_, err = LoadPresets(filepath.Join(t.TempDir(), "missing.yaml"))
	assert.ErrorIs(t, err, plan.ErrPreset)
}

// TestReplicaPlan: a plan's replicas are used only where the user left the count and the
// pipeline to it, over several nodes, behind the gateway.
func TestReplicaPlan(t *testing.T) {
	p := &plan.Plan{Run: plan.RunShape{Replicas: 4, PerNode: 2, Tensor: 1, Pipeline: 1}}
	c := config.Default()
	run, ok := ReplicaPlan(c, 0, p, 2)
	assert.True(t, ok)
	assert.Equal(t, 4, run.Replicas)
	for name, tt := range map[string]struct {
		cfg   func(c *config.Config)
		p     *plan.Plan
		nodes int
	}{
		"no plan":        {func(*config.Config) {}, nil, 2},
		"one node":       {func(*config.Config) {}, p, 1},
		"one engine":     {func(*config.Config) {}, &plan.Plan{Run: plan.RunShape{Replicas: 1}}, 2},
		"pipeline given": {func(c *config.Config) { c.PipelineParallel = 2 }, p, 2},
		"no gateway":     {func(c *config.Config) { c.Gateway = false }, p, 2},
	} {
		c := config.Default()
		tt.cfg(&c)
		_, ok := ReplicaPlan(c, 0, tt.p, tt.nodes)
		assert.False(t, ok, name)
	}
	_, ok = ReplicaPlan(config.Default(), 1, p, 2)
	assert.False(t, ok, "replicas given")
}
