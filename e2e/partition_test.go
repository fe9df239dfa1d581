//go:build e2e

package e2e

import (
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// jobHosts are the job's hosts in Slurm's order: the first is the head.
func jobHosts(t *testing.T, id string) []string {
	t.Helper()
	out, err := exec.Command("squeue", "-h", "-j", id, "-o", "%N").Output()
	require.NoError(t, err)
	hosts, err := exec.Command("scontrol", "show", "hostnames", strings.TrimSpace(string(out))).Output()
	require.NoError(t, err)
	return strings.Fields(string(hosts))
}

// setLink takes a node's only link to the others down or up, in its namespace.
func setLink(t *testing.T, host, state string) {
	t.Helper()
	out, err := exec.Command("ip", "-n", "llm"+host, "link", "set", "eth0", state).CombinedOutput()
	require.NoError(t, err, "%s", out)
}

// TestNetworkPartition cuts the worker off from the head (issue 31, item 1): for 5 s the
// endpoint keeps or regains its service with at most one engine restart; for good, the job
// fails within --node-lost-timeout of Ray's notice, naming the worker as unreachable, and
// nothing is left once the link is back for Slurm to end the step.
func TestNetworkPartition(t *testing.T) {
	const lostTimeout = 20 * time.Second
	// --no-requeue: once Slurm declares the cut-off node down (SlurmdTimeout), it would
	// otherwise start the job over on the nodes left.
	j := submit(t, jobSpec{script: "multinode.sbatch", sbatch: []string{"-N", "2", "--gpus-per-node=1", "--cpus-per-task=1", "--no-requeue"},
		agent: []string{"--node-lost-timeout", lostTimeout.String()}})
	c := j.waitState(jobfiles.StateReady, readyTimeout)
	worker := jobHosts(t, j.id)[1]
	t.Cleanup(func() { restoreNode(t, worker) })
	key := j.apiKey(c)
	ask := func() bool {
		resp, _ := chat(t, c.BaseURL, key, c.ServedModelName, false)
		return resp.StatusCode == http.StatusOK
	}
	before := c.Restarts["vllm"]

	// Five seconds apart.
	setLink(t, worker, "down")
	down := time.Now()
	var answered, refusedN int
	for time.Since(down) < 5*time.Second {
		if ask() {
			answered++
		} else {
			refusedN++
		}
	}
	setLink(t, worker, "up")
	up := time.Now()
	var back time.Duration
	require.True(t, assertEventually(2*time.Minute, func() bool {
		if cur, ok := j.conn(); ok && cur.State == jobfiles.StateReady && ask() {
			back = time.Since(up)
			return true
		}
		return false
	}), "the endpoint never served again after a 5 s partition")
	cur, _ := j.conn()
	restarts := cur.Restarts["vllm"] - before
	assert.LessOrEqual(t, restarts, 1, "at most one engine restart")
	t.Logf("5 s partition: %d requests answered and %d refused during it; served again %.1f s after the link came back; engine restarts %d",
		answered, refusedN, back.Seconds(), restarts)

	// For good.
	setLink(t, worker, "down")
	down = time.Now()
	end := j.waitState(jobfiles.StateFailed, lostTimeout+90*time.Second)
	detect := time.Since(down)
	assert.Contains(t, end.Reason, worker+" unreachable")
	assert.Less(t, detect, lostTimeout+40*time.Second, "Ray's notice (5 checks of 3 s, a second apart) and --node-lost-timeout")
	t.Logf("lasting partition: failed %.1f s after the link went down (--node-lost-timeout %s): %s", detect.Seconds(), lostTimeout, end.Reason)
	setLink(t, worker, "up")
	t.Logf("slurm: %s", j.waitEnded(2*time.Minute))
	requireNoProcesses(t, time.Minute)
	out, err := exec.Command(suite.agentBin, "status", j.stateDir).CombinedOutput()
	t.Logf("llm-agent status (%v):\n%s", err, out)
	assert.Contains(t, string(out), "unreachable")
}
