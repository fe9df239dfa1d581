//go:build e2e

package e2e

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// modelFiles is how many weight files fillModel writes, beside config.json.
const modelFiles = 8

// fillModel writes a made-up model and, with the agent's own command, its SHA256SUMS.
func fillModel(t *testing.T) func(string) {
	return func(dir string) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"model_type":"llama"}`), 0o644))
		for i := range modelFiles {
			b := []byte(strings.Repeat(fmt.Sprintf("weights of shard %d\n", i), 50000))
			require.NoError(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, modelFiles)), b, 0o644))
		}
		out, err := exec.Command(suite.agentBin, "model", "manifest", dir).CombinedOutput()
		require.NoError(t, err, "%s", out)
	}
}

// hashedByNode reads, from the job's output, the files each node hashed of its share.
func hashedByNode(t *testing.T, j *job) map[string][]string {
	re := regexp.MustCompile(`verified this node's share of the model: .*node=(node\d).* hashed_files="?([^"\s]*)`)
	out := map[string][]string{}
	for _, m := range re.FindAllStringSubmatch(j.outputText(), -1) {
		if m[2] != "" {
			out[m[1]] = append(out[m[1]], strings.Split(m[2], ",")...)
		}
	}
	return out
}

// TestSharedVerification: three nodes verify the model from the shared filesystem, each its
// share, and every file is hashed exactly once, which the logs show. A second job finds the
// model unchanged and hashes nothing.
func TestSharedVerification(t *testing.T) {
	home, err := os.MkdirTemp(suite.work, "home-") // both jobs share the user's record
	require.NoError(t, err)
	spec := jobSpec{script: "multinode.sbatch", sbatch: []string{"-N", "3", "--gpus-per-node=1", "--cpus-per-task=1"},
		agent: []string{"--replicas", "3"}, fill: fillModel(t), home: home}
	j := submit(t, spec)
	c := j.waitState(jobfiles.StateReady, readyTimeout)
	require.NotNil(t, c.ModelPrep)
	assert.Equal(t, "verify", c.ModelPrep.Phase)
	byNode := hashedByNode(t, j)
	var all []string
	for node, files := range byNode {
		t.Logf("BENCH shared hashing: %s hashed %d files: %s", node, len(files), strings.Join(files, " "))
		all = append(all, files...)
	}
	assert.Len(t, byNode, 3, "every node hashed a share")
	slices.Sort(all)
	want := []string{"config.json"}
	for i := range modelFiles {
		want = append(want, fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, modelFiles))
	}
	slices.Sort(want)
	assert.Equal(t, want, all, "each file hashed exactly once, over the three nodes")
	assert.Contains(t, j.outputText(), "model verified")
	resp, body := chat(t, c.BaseURL, j.apiKey(c), c.ServedModelName, false)
	assert.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	require.NoError(t, exec.Command("scancel", j.id).Run())
	j.waitState(jobfiles.StateStopped, drainBound)
	requireNoProcesses(t, drainBound)

	// The next job, on the same model: the record in the user's home vouches for every file.
	spec.fill, spec.noModel = nil, true
	spec.agent = append(spec.agent, "--model", filepath.Join(j.dir, "models", "tiny-test"))
	k := submit(t, spec)
	k.waitState(jobfiles.StateReady, readyTimeout)
	assert.Empty(t, hashedByNode(t, k), "an unchanged model is not read again")
	require.NoError(t, exec.Command("scancel", k.id).Run())
	k.waitState(jobfiles.StateStopped, drainBound)
	requireNoProcesses(t, drainBound)
}

// TestCorruptModelFails: one flipped byte in one weight file fails the job before any engine
// starts, naming the file; nothing is left running.
func TestCorruptModelFails(t *testing.T) {
	fill := fillModel(t)
	j := submit(t, jobSpec{script: "multinode.sbatch", sbatch: []string{"-N", "3", "--gpus-per-node=1", "--cpus-per-task=1"},
		fill: func(dir string) {
			fill(dir)
			f := filepath.Join(dir, "model-00006-of-00008.safetensors")
			b, err := os.ReadFile(f)
			require.NoError(t, err)
			b[12345] ^= 0x20
			require.NoError(t, os.WriteFile(f, b, 0o644))
		}})
	assert.Equal(t, "FAILED", j.waitEnded(2*time.Minute))
	c, ok := j.conn()
	require.True(t, ok)
	assert.Equal(t, jobfiles.StateFailed, c.State)
	assert.Contains(t, c.Reason, "model-00006-of-00008.safetensors (sha256 ")
	assert.Contains(t, j.outputText(), "model-00006-of-00008.safetensors")
	assert.NotContains(t, j.outputText(), "fakevllm (test double, not vLLM): serving", "no engine started")
	requireNoProcesses(t, drainBound)
}

// TestStagedModel: --stage-dir copies the model, verified in the same pass, and the engines
// load the copy; the job comes up ready and answers. The mini-cluster's nodes share one disk,
// so they take turns on the copy: one writes it, the others use it. It goes with the job.
func TestStagedModel(t *testing.T) {
	stage, err := os.MkdirTemp(suite.work, "stage-")
	require.NoError(t, err)
	j := submit(t, jobSpec{script: "multinode.sbatch", sbatch: []string{"-N", "3", "--gpus-per-node=1", "--cpus-per-task=1"},
		agent: []string{"--replicas", "3", "--stage-dir", stage}, fill: fillModel(t)})
	c := j.waitState(jobfiles.StateReady, readyTimeout)
	require.NotNil(t, c.ModelPrep)
	assert.Equal(t, "stage", c.ModelPrep.Phase)
	assert.Equal(t, c.ModelPrep.BytesTotal, c.ModelPrep.BytesDone)
	assert.Equal(t, "tiny-test", c.ServedModelName, "the copy serves under the model's name")
	out := j.outputText()
	assert.Equal(t, 1, strings.Count(out, "model staged: "), "one node wrote the copy")
	assert.Equal(t, 2, strings.Count(out, "staged copy of the model reused"), "the others used it")
	copies, _ := filepath.Glob(filepath.Join(stage, "llm-agent-*", "tiny-test-*"))
	copies = slices.DeleteFunc(copies, func(p string) bool { return strings.HasSuffix(p, ".lock") })
	require.Len(t, copies, 1)
	assert.Contains(t, out, "serving "+copies[0]+" as tiny-test", "the engines load the copy")
	assert.FileExists(t, filepath.Join(copies[0], "model-00008-of-00008.safetensors"))
	resp, body := chat(t, c.BaseURL, j.apiKey(c), c.ServedModelName, false)
	assert.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	require.NoError(t, exec.Command("scancel", j.id).Run())
	j.waitState(jobfiles.StateStopped, drainBound)
	requireNoProcesses(t, drainBound)
	assert.NoDirExists(t, copies[0], "the copy goes with the job")
}
