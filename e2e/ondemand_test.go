//go:build e2e

package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// TestOnDemandApp renders the Open OnDemand app (deploy/ondemand) with real Ruby ERB, submits
// the batch script it makes to the mini-cluster as OnDemand would (its submit.yml's sbatch
// options, its before.sh, its connection file), and checks that the session card's host and
// port are the endpoint's: the agent's gateway is on the port OnDemand's helper chose.
func TestOnDemandApp(t *testing.T) {
	dir, err := os.MkdirTemp(suite.work, "ondemand-")
	require.NoError(t, err)
	model := filepath.Join(dir, "models", "tiny-test")
	require.NoError(t, os.MkdirAll(model, 0o755))
	session := filepath.Join(dir, "session")
	render := func(values ...string) {
		args := append([]string{filepath.Join(suite.root, "e2e", "ondemand", "render.rb"),
			filepath.Join(suite.root, "deploy", "ondemand"), session}, values...)
		out, err := exec.Command("ruby", args...).CombinedOutput()
		require.NoError(t, err, "render: %s", out)
	}
	render("model="+model, "bc_num_slots=2", "gpus_per_node=1", "bc_num_hours=1")

	var asked struct {
		Script struct {
			Native []string `yaml:"native"`
		} `yaml:"script"`
	}
	b, err := os.ReadFile(filepath.Join(session, "submit.yml"))
	require.NoError(t, err)
	require.NoError(t, yaml.Unmarshal(b, &asked))
	require.Contains(t, asked.Script.Native, "--nodes=2")
	sbatch := append(asked.Script.Native, "--time=60", "--cpus-per-task=1")

	j := submit(t, jobSpec{
		script:  filepath.Join(session, "job.sh"),
		sbatch:  sbatch,
		noModel: true,
		env:     []string{"LLM_AGENT_HOME=" + suite.root},
	})
	c := j.waitState(jobfiles.StateReady, readyTimeout)

	var card struct {
		Host  string `yaml:"host"`
		Port  int    `yaml:"port"`
		JobID string `yaml:"job_id"`
	}
	b, err = os.ReadFile(filepath.Join(session, "connection.yml"))
	require.NoError(t, err)
	require.NoError(t, yaml.Unmarshal(b, &card))
	require.Equal(t, j.id, card.JobID)
	require.Equal(t, c.HeadHost, card.Host, "the batch script runs on the head")
	require.Equal(t, c.Port, card.Port, "the gateway is on the port OnDemand's find_port chose")
	require.Equal(t, 2, c.Nodes, "the job spans the nodes the form asked for")

	req, err := http.NewRequest(http.MethodGet, c.BaseURL+"/models", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+j.apiKey(c))
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	require.Contains(t, string(body), "tiny-test")

	render("model="+model, "bc_num_slots=2", "gpus_per_node=1", "bc_num_hours=1",
		"host="+card.Host, fmt.Sprint("port=", card.Port), "job_id="+card.JobID)
	view, err := os.ReadFile(filepath.Join(session, "view.html"))
	require.NoError(t, err)
	require.Contains(t, string(view), fmt.Sprintf("<code>%s:%d</code>", card.Host, card.Port))
	require.Contains(t, string(view), "llm-agent status "+j.id)

	require.NoError(t, exec.Command("scancel", j.id).Run())
	require.NotEqual(t, "FAILED", j.waitEnded(drainBound))
	require.False(t, strings.Contains(j.outputText(), "panic"), "%s", j.outputText())
	requireNoProcesses(t, drainBound)
	t.Logf("session card: job %s on %s:%d, the endpoint's port", card.JobID, card.Host, card.Port)
}
