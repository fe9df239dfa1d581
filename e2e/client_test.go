//go:build e2e

package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// TestPythonClient runs clients/python/e2e with the official OpenAI SDK against a job: chat,
// completion, streaming, models, a wrong key, and a restart survived with wait_ready.
func TestPythonClient(t *testing.T) {
	venv := os.Getenv("LLM_AGENT_CLIENT_VENV")
	if venv == "" {
		venv = filepath.Join(suite.root, ".venv-client")
	}
	python := filepath.Join(venv, "bin", "python")
	require.NoError(t, exec.Command(python, "-c", "import openai, pytest, llm_agent_client").Run(),
		"no client environment in %s: make client-venv", venv)
	j := submit(t, jobSpec{script: "singlenode.sbatch", sbatch: []string{"--gpus-per-node=2", "--cpus-per-task=1"}})
	j.waitState(jobfiles.StateReady, readyTimeout)
	// Kills this job's engine only: the one fakevllm on node 1 (tests run one at a time).
	kill := filepath.Join(j.dir, "kill-engine.sh")
	require.NoError(t, os.WriteFile(kill, []byte(`#!/bin/sh
set -e
for p in $(ip netns pids llmnode1); do
    [ "$(cat /proc/$p/comm 2>/dev/null)" = fakevllm ] && kill -KILL "$p" && exit 0
done
echo "no fakevllm on node1" >&2; exit 1
`), 0o755))
	cmd := exec.Command(python, "-m", "pytest", "-v", "-p", "no:cacheprovider", "e2e")
	cmd.Dir = filepath.Join(suite.root, "clients", "python")
	cmd.Env = append(os.Environ(), "LLM_AGENT_E2E_STATE_DIR="+j.stateDir, "LLM_AGENT_E2E_KILL_ENGINE="+kill, "HOME="+filepath.Join(j.dir, "home"))
	out, err := cmd.CombinedOutput()
	t.Logf("pytest:\n%s", out)
	require.NoError(t, err)
}
