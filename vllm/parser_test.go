//go:build e2evllm

package vllm

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestManagedFlagsAgainstVLLMParser asks vLLM's own `vllm serve` parser (the CPU build that
// make e2e-vllm installs) which spellings of the managed flags it accepts, and checks that
// CheckExtraArgs refuses every one that would change a managed setting, and accepts every option
// vLLM has that is not managed.
func TestManagedFlagsAgainstVLLMParser(t *testing.T) {
	venv := os.Getenv("LLM_AGENT_VENV")
	require.NotEmpty(t, venv, "LLM_AGENT_VENV names the environment with vLLM (make e2e-vllm sets it)")
	dests := []string{"model_tag"}
	for _, m := range managed {
		if m.long != "--omni" { // read from sys.argv by vllm's main, not by the parser
			dests = append(dests, strings.ReplaceAll(strings.TrimPrefix(m.long, "--"), "-", "_"))
		}
	}
	cmd := exec.Command(filepath.Join(venv, "bin", "python"), append([]string{"testdata/flag_probe.py"}, dests...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "vLLM's parser probe: %s", stderr.String())
	var probe struct {
		Candidates []struct {
			Args    []string `json:"args"`
			Changed []string `json:"changed"`
		} `json:"candidates"`
		Others []string `json:"others"`
	}
	require.NoError(t, json.Unmarshal(out, &probe))

	smuggles := 0
	for _, c := range probe.Candidates {
		if len(c.Changed) == 0 {
			continue
		}
		smuggles++
		assert.Error(t, CheckExtraArgs(c.Args), "vLLM reads %q as %v, and the rule let it through", c.Args, c.Changed)
	}
	// The probe must have found real smuggling routes, or it proves nothing: abbreviations and
	// the dotted form among them.
	assert.Greater(t, smuggles, 100, "spellings vLLM accepts for the managed flags")
	for _, known := range [][]string{{"--por", "7"}, {"--ser", "7"}, {"--host.x", "7"}, {"--api_key", "7"}, {"-n7"}} {
		found := false
		for _, c := range probe.Candidates {
			found = found || (strings.Join(c.Args, " ") == strings.Join(known, " ") && len(c.Changed) > 0)
		}
		assert.True(t, found, "vLLM no longer accepts %q; the probe or the parser changed", known)
	}
	require.Greater(t, len(probe.Others), 200, "vLLM's other options")
	for _, opt := range probe.Others {
		assert.NoError(t, CheckExtraArgs([]string{opt}), "a flag the agent does not manage is refused")
	}
	t.Logf("vLLM's parser: %d spellings of managed flags tried, %d accepted by vLLM and refused by the rule; %d other options allowed",
		len(probe.Candidates), smuggles, len(probe.Others))
}
