package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/plan"
	"github.com/llm-agent/llm-agent/jobfiles"
)

func oneNodeFourGPUs() map[string]string {
	return map[string]string{"SLURM_JOB_ID": "61", "SLURM_JOB_NODELIST": "g1", "SLURM_NODEID": "0",
		"SLURM_GPUS_ON_NODE": "4", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
}

func TestRunPlansFromTheModel(t *testing.T) {
	dir := t.TempDir()
	argsFile := filepath.Join(t.TempDir(), "args")
	t.Setenv("FAKE_VLLM_ARGS", argsFile)
	cfg := testConfig(t, dir)
	cfg.Model = "plan/testdata/models/llama-3.1-8b"
	cfg.ServedModelName = "tiny"
	cfg.GPUMemory = "80GB"
	cfg.Preset = "dev"
	cfg.VLLMArgs = []string{"--max-num-seqs", "4"}
	run := startAgent(cfg, testDeps(t, oneNodeFourGPUs(), "g1"))
	c := waitConnState(t, dir, jobfiles.StateReady, 20*time.Second)
	assert.Equal(t, 1, c.TensorParallel, "an 8B model needs one GPU")
	assert.Equal(t, 1, c.PipelineParallel)
	b, err := os.ReadFile(argsFile)
	require.NoError(t, err)
	args := strings.Join(strings.Split(string(b), "\n"), " ")
	assert.Contains(t, args, "--tensor-parallel-size 1 --pipeline-parallel-size 1")
	assert.Contains(t, args, "--max-model-len 2048", "from the dev preset")
	assert.Contains(t, args, "--enforce-eager")
	assert.Contains(t, args, "--max-num-seqs 4", "the user's flag wins over the preset's 8")
	assert.NotContains(t, args, "--max-num-seqs 8")
	require.NoError(t, run.stop(t))
}

func TestRunEndsWhenTheModelCannotFit(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.Model = "plan/testdata/models/llama-3.1-405b"
	cfg.GPUMemory = "80GB"
	start := time.Now()
	err := Run(context.Background(), cfg, testDeps(t, oneNodeFourGPUs(), "g1"))
	require.ErrorIs(t, err, ErrBadInput)
	require.ErrorIs(t, err, plan.ErrDoesNotFit)
	assert.Contains(t, err.Error(), "needs 811.7 GB for weights, allocation has 4×80 GB")
	assert.Less(t, time.Since(start), 5*time.Second)
	assertNoChildren(t)
}

func TestRunFallsBackWithoutAPlan(t *testing.T) {
	// An empty model directory (no config.json) and no GPU memory: GPUs per node × nodes.
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	run := startAgent(cfg, testDeps(t, oneNodeFourGPUs(), "g1"))
	c := waitConnState(t, dir, jobfiles.StateReady, 20*time.Second)
	assert.Equal(t, 4, c.TensorParallel)
	require.NoError(t, run.stop(t))
}

func TestRunUnknownPreset(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.Preset = "gigantic"
	err := Run(context.Background(), cfg, testDeps(t, map[string]string{}, "n1"))
	require.ErrorIs(t, err, config.ErrInvalid)
	assert.Contains(t, err.Error(), `unknown preset "gigantic"`)
	cfg.Preset, cfg.PresetsFile = "dev", filepath.Join(t.TempDir(), "missing.yaml")
	err = Run(context.Background(), cfg, testDeps(t, map[string]string{}, "n1"))
	assert.ErrorIs(t, err, config.ErrInvalid)
}
