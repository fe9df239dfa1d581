package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/modelprep"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/model"
)

// manifestModel fills dir with a made-up model of files and its SHA256SUMS.
func manifestModel(t *testing.T, dir string, files int) {
	t.Helper()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"model_type":"llama"}`), 0o644))
	for i := range files {
		b := []byte(strings.Repeat(fmt.Sprintf("weights %d ", i), 1000))
		require.NoError(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("model-%05d.safetensors", i)), b, 0o644))
	}
	_, err := model.WriteManifest(context.Background(), dir, 2)
	require.NoError(t, err)
}

// verifiedJob is a job of fake Ray and vLLM whose model has 8 weight files and a SHA256SUMS:
// its state directory, the file the engine writes its arguments to, and its configuration.
func verifiedJob(t *testing.T) (string, string, config.Config) {
	dir := t.TempDir()
	t.Setenv("FAKE_RAY_DIR", t.TempDir())
	argsFile := filepath.Join(t.TempDir(), "args")
	t.Setenv("FAKE_VLLM_ARGS", argsFile)
	cfg := testConfig(t, dir)
	manifestModel(t, cfg.Model, 8)
	return dir, argsFile, cfg
}

// TestRunVerifiesModelSharedByNodes: three nodes each hash their share of a model with a
// SHA256SUMS; every file is read by exactly one node, the head records the whole, the engine
// runs offline, and the connection file shows the head's part.
func TestRunVerifiesModelSharedByNodes(t *testing.T) {
	dir, argsFile, cfg := verifiedJob(t)
	runs := startNodes(t, cfg, "4747", 3, nil)
	c := waitConnState(t, dir, jobfiles.StateReady, 30*time.Second)
	require.NotNil(t, c.ModelPrep)
	assert.Equal(t, "verify", c.ModelPrep.Phase)

	read := map[string]string{}
	for _, host := range []string{"node1", "node2", "node3"} {
		var r modelprep.Report
		require.NoError(t, jobfiles.ReadJSON(filepath.Join(dir, modelprep.DirName, host+".json"), &r))
		assert.Empty(t, r.Err)
		require.Len(t, r.Shares, 1)
		assert.NotEmpty(t, r.Shares[0].Files, "%s hashed a share", host)
		for _, f := range r.Shares[0].Files {
			assert.Empty(t, read[f.Name], "%s read by %s and %s", f.Name, read[f.Name], host)
			read[f.Name] = host
			assert.True(t, f.OK)
		}
	}
	assert.Len(t, read, 9, "every file of SHA256SUMS, once")
	var v modelprep.Verdict
	require.NoError(t, jobfiles.ReadJSON(filepath.Join(dir, modelprep.DirName, "verdict.json"), &v))
	assert.True(t, v.OK)
	offline, err := os.ReadFile(argsFile + ".offline")
	require.NoError(t, err)
	assert.Equal(t, "1", string(offline), "a local model: the engine runs with HF_HUB_OFFLINE=1")

	for _, err := range stopNodes(t, runs) {
		require.NoError(t, err)
	}
	assertNoChildren(t)
}

// TestRunVerifiesTheModelsThatCan: of two models, only the second has a SHA256SUMS. It is
// verified, shared by the nodes, and the first is left to the engine.
func TestRunVerifiesTheModelsThatCan(t *testing.T) {
	dir, _, cfg := verifiedJob(t)
	plain := t.TempDir()
	cfg.ServedModelName = ""
	cfg.ModelsFile = writeModelsFile(t, "models:\n  - {model: "+plain+", served_model_name: plain}\n  - {model: "+cfg.Model+", served_model_name: checked}\n")
	cfg.Model = ""
	runs := startNodes(t, cfg, "5151", 2, nil)
	waitConnState(t, dir, jobfiles.StateReady, 30*time.Second)
	read := 0
	for _, host := range []string{"node1", "node2"} {
		var r modelprep.Report
		require.NoError(t, jobfiles.ReadJSON(filepath.Join(dir, modelprep.DirName, host+".json"), &r))
		require.Len(t, r.Shares, 1, "one model to verify")
		assert.Equal(t, model.SourceManifest, r.Shares[0].Source)
		read += len(r.Shares[0].Files)
	}
	assert.Equal(t, 9, read, "the checked model's files, once each")
	for _, err := range stopNodes(t, runs) {
		require.NoError(t, err)
	}
	assertNoChildren(t)
}

// TestRunFailsOnCorruptModel: a byte flipped in one file fails the job before the engine
// starts, naming the file, as input to fix.
func TestRunFailsOnCorruptModel(t *testing.T) {
	dir, argsFile, cfg := verifiedJob(t)
	weights := filepath.Join(cfg.Model, "model-00005.safetensors")
	b, err := os.ReadFile(weights)
	require.NoError(t, err)
	b[100] ^= 1
	require.NoError(t, os.WriteFile(weights, b, 0o644))
	runs := startNodes(t, cfg, "4848", 3, nil)
	c := waitConnState(t, dir, jobfiles.StateFailed, 30*time.Second)
	assert.Contains(t, c.Reason, "model-00005.safetensors (sha256 ")
	select {
	case err := <-runs[0].done:
		assert.ErrorIs(t, err, ErrBadInput)
		assert.ErrorContains(t, err, "model-00005.safetensors")
	case <-time.After(30 * time.Second):
		t.Fatal("the head did not end")
	}
	stopNodes(t, runs[1:])
	assert.NoFileExists(t, argsFile, "no engine started")
	assertNoChildren(t)
}

// TestRunStagesModel: --stage-dir copies the model to node-local disk, verified in the same
// pass; the engine loads the copy under the model's name; the copy goes when the job ends,
// unless --stage-keep, and a kept copy is reused unread.
func TestRunStagesModel(t *testing.T) {
	argsFile := filepath.Join(t.TempDir(), "args")
	t.Setenv("FAKE_VLLM_ARGS", argsFile)
	stageDir := t.TempDir()
	run := func(keep bool) modelprep.Report {
		dir := t.TempDir()
		cfg := testConfig(t, dir)
		if keep {
			cfg.Model = filepath.Join(stageDir, "..", "kept-model")
			require.NoError(t, os.MkdirAll(cfg.Model, 0o755))
			if _, err := os.Stat(filepath.Join(cfg.Model, model.ManifestName)); err != nil {
				manifestModel(t, cfg.Model, 3)
			}
		} else {
			manifestModel(t, cfg.Model, 3)
		}
		cfg.StageDir, cfg.StageKeep = stageDir, keep
		runs := startNodes(t, cfg, "4949", 1, nil)
		c := waitConnState(t, dir, jobfiles.StateReady, 30*time.Second)
		require.NotNil(t, c.ModelPrep)
		assert.Equal(t, "stage", c.ModelPrep.Phase)
		assert.EqualValues(t, c.ModelPrep.BytesTotal, c.ModelPrep.BytesDone)
		assert.Equal(t, "tiny", c.ServedModelName)
		var r modelprep.Report
		require.NoError(t, jobfiles.ReadJSON(filepath.Join(dir, modelprep.DirName, "node1.json"), &r))
		require.NotNil(t, r.Staged)
		args, err := os.ReadFile(argsFile)
		require.NoError(t, err)
		assert.True(t, strings.HasPrefix(string(args), r.Staged.Dir+"\n"), "the engine loads the copy: %s", args)
		assert.FileExists(t, filepath.Join(r.Staged.Dir, "model-00002.safetensors"))
		for _, err := range stopNodes(t, runs) {
			require.NoError(t, err)
		}
		if keep {
			assert.DirExists(t, r.Staged.Dir, "--stage-keep")
		} else {
			assert.NoDirExists(t, r.Staged.Dir, "the copy goes with the job")
		}
		return r
	}
	first := run(false)
	assert.False(t, first.Staged.Reused)
	kept := run(true)
	assert.False(t, kept.Staged.Reused)
	again := run(true)
	assert.True(t, again.Staged.Reused, "an unchanged kept copy is reused")
	assert.Equal(t, kept.Staged.Dir, again.Staged.Dir)
	assertNoChildren(t)
}

// TestRunStageDirRefused: a stage directory that is not there fails the job before anything
// starts, as input to fix.
func TestRunStageDirRefused(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	manifestModel(t, cfg.Model, 1)
	cfg.StageDir = filepath.Join(t.TempDir(), "no-such-scratch")
	runs := startNodes(t, cfg, "5050", 1, nil)
	select {
	case err := <-runs[0].done:
		assert.ErrorIs(t, err, ErrBadInput)
		assert.ErrorContains(t, err, "no-such-scratch is not a directory")
	case <-time.After(30 * time.Second):
		t.Fatal("the agent did not end")
	}
	assertNoChildren(t)
}
