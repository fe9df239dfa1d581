package agent

import (
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/gateway"
	"github.com/llm-agent/llm-agent/jobfiles"
)

// engineNotOn returns the pid of a fake engine, started by this test process (or its
// children), on a socket other than skip; engineOn the one on socket. Processes of anyone else
// are never looked at.
func engineNotOn(t *testing.T, skip string) int {
	t.Helper()
	return fakeEngine(func(cmd string) bool { return strings.Contains(cmd, "--uds") && !strings.Contains(cmd, skip) })
}

func engineOn(t *testing.T, socket string) int {
	t.Helper()
	return fakeEngine(func(cmd string) bool { return strings.Contains(cmd, socket) })
}

// fakeEngine returns the first fake engine below this test process whose command line matches.
func fakeEngine(match func(cmd string) bool) int {
	for _, pid := range descendantsOf(os.Getpid()) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if err == nil && strings.Contains(string(b), "vllm\x00serve\x00") && match(string(b)) {
			return pid
		}
	}
	return 0
}

// descendantsOf returns the processes below pid.
func descendantsOf(pid int) []int {
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		kids := childrenOf(queue[0])
		queue = append(queue[1:], kids...)
		out = append(out, kids...)
	}
	return out
}

// TestRunReplicas runs two replicas, one per node, with no Ray: the head's gateway routes to
// both, and the worker's engine, killed, leaves the rotation, is restarted by its own node's
// agent and comes back.
func TestRunReplicas(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("FAKE_RAY_DIR", t.TempDir())
	cfg := testConfig(t, dir)
	cfg.Replicas = 2
	cfg.BackoffInitial, cfg.BackoffMax = 3*time.Second, 3*time.Second // a restart slow enough for the head to see, as real engines' are
	runs := startNodes(t, cfg, "4545", 2, nil)
	stopped := false
	t.Cleanup(func() {
		if !stopped { // a failed check: nothing may be left running
			stopNodes(t, runs)
		}
	})
	c := waitConnState(t, dir, jobfiles.StateReady, 30*time.Second)
	assert.Empty(t, c.RayAddress, "no Ray")
	assert.Empty(t, fakeRayPIDs(t, true))
	assert.Empty(t, fakeRayPIDs(t, false))
	states := func() string {
		c, _ := jobfiles.ReadConnection(filepath.Join(dir, jobfiles.ConnectionFile))
		var s []string
		for _, r := range c.Replicas {
			s = append(s, r.Node+"="+r.State)
		}
		return strings.Join(s, " ")
	}
	require.Eventually(t, func() bool { return states() == "node1=ready node2=ready" }, 30*time.Second, 20*time.Millisecond, "replicas: %s", states())
	served := servedBy(t, c, 20)
	assert.Greater(t, served["node1"], 0, "%v", served)
	assert.Greater(t, served["node2"], 0, "%v", served)
	rk, err := os.Stat(filepath.Join(dir, ReplicaKeyFile))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), rk.Mode().Perm())

	pid := engineNotOn(t, c.EngineSocket)
	require.NotZero(t, pid, "the worker's engine")
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	require.Eventually(t, func() bool { return states() == "node1=ready node2=not ready" }, 5*time.Second, 20*time.Millisecond, "replicas: %s", states())
	require.Eventually(t, func() bool { return states() == "node1=ready node2=ready" }, 30*time.Second, 20*time.Millisecond, "replicas: %s", states())
	c = waitConnState(t, dir, jobfiles.StateReady, time.Second)
	assert.Equal(t, 0, c.Restarts["vllm"], "the head's engine did not restart")
	require.Eventually(t, func() bool {
		c, _ := jobfiles.ReadConnection(filepath.Join(dir, jobfiles.ConnectionFile))
		return len(c.Replicas) == 2 && c.Replicas[0].Restarts == 0 && c.Replicas[1].Restarts == 1
	}, 5*time.Second, 20*time.Millisecond, "the connection file counts node2's restart")

	// The head's own engine dies: the service stays ready on node2 meanwhile.
	pid = engineOn(t, c.EngineSocket)
	require.NotZero(t, pid, "the head's engine")
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	require.Eventually(t, func() bool { return states() == "node1=not ready node2=ready" }, 5*time.Second, 20*time.Millisecond, "replicas: %s", states())
	c = waitConnState(t, dir, jobfiles.StateReady, time.Second)
	assert.Equal(t, map[string]int{"node2": 1}, servedBy(t, c, 1), "answered by node2")
	require.Eventually(t, func() bool { return states() == "node1=ready node2=ready" }, 30*time.Second, 20*time.Millisecond, "replicas: %s", states())
	stopped = true
	for _, err := range stopNodes(t, runs) {
		require.NoError(t, err)
	}
	assertNoChildren(t)
}

func TestReplicasConfig(t *testing.T) {
	for _, tt := range []struct {
		file, want string
	}{
		{"replicas: 2\ngateway: false\n", "needs the gateway"},
		{"replicas: 2\npipeline-parallel-size: 2\n", "not supported"},
	} {
		_, err := config.Resolve([]byte("model: /m/tiny\n"+tt.file), func(string) string { return "" }, nil)
		assert.ErrorIs(t, err, config.ErrInvalid)
		assert.ErrorContains(t, err, tt.want)
	}
	cfg := testConfig(t, t.TempDir())
	cfg.Replicas = 3
	err := Run(t.Context(), cfg, testDeps(t, map[string]string{"SLURM_JOB_ID": "4646", "SLURM_JOB_NODELIST": "node[1-2]",
		"SLURM_NODEID": "0", "SLURM_GPUS_ON_NODE": "1"}, "node1"))
	assert.ErrorIs(t, err, ErrBadInput)
	assert.ErrorContains(t, err, "--replicas 3 on 2 nodes of 1 GPUs: give at most 2 (one per node), or a multiple of 2 whose replicas per node divide the node's GPUs")
	cfg.Replicas = 4 // 2 per node, but a node has 1 GPU
	err = Run(t.Context(), cfg, testDeps(t, map[string]string{"SLURM_JOB_ID": "4646", "SLURM_JOB_NODELIST": "node[1-2]",
		"SLURM_NODEID": "0", "SLURM_GPUS_ON_NODE": "1"}, "node1"))
	assert.ErrorIs(t, err, ErrBadInput)
}

// TestRunReplicasPerNode runs two replicas on one node of two GPUs: each engine sees its own
// GPU, the gateway routes to both, and one killed leaves the rotation and comes back.
func TestRunReplicasPerNode(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.Replicas = 2
	cfg.BackoffInitial, cfg.BackoffMax = time.Second, time.Second
	runs := startNodes(t, cfg, "4949", 1, map[string]string{"SLURM_GPUS_ON_NODE": "2", "CUDA_VISIBLE_DEVICES": "0,1"})
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			stopNodes(t, runs)
		}
	})
	c := waitConnState(t, dir, jobfiles.StateReady, 30*time.Second)
	states := func() string {
		c, _ := jobfiles.ReadConnection(filepath.Join(dir, jobfiles.ConnectionFile))
		var s []string
		for _, r := range c.Replicas {
			s = append(s, fmt.Sprintf("%s=%s/%d", r.Node, r.State, r.GPUs))
		}
		return strings.Join(s, " ")
	}
	require.Eventually(t, func() bool { return states() == "node1/0=ready/1 node1/1=ready/1" }, 30*time.Second, 20*time.Millisecond, "replicas: %s", states())

	// Each engine has its own GPU.
	gpus := map[string]int{}
	for _, pid := range descendantsOf(os.Getpid()) {
		cmd, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if !strings.Contains(string(cmd), "vllm\x00serve\x00") {
			continue
		}
		env, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
		for _, kv := range strings.Split(string(env), "\x00") {
			if v, ok := strings.CutPrefix(kv, "CUDA_VISIBLE_DEVICES="); ok {
				gpus[v]++
			}
		}
	}
	// (An engine and its reaper show the same command line and environment.)
	assert.ElementsMatch(t, []string{"0", "1"}, slices.Collect(maps.Keys(gpus)), "one GPU each: %v", gpus)
	assert.Equal(t, gpus["0"], gpus["1"])

	served := servedBy(t, c, 20)
	assert.Greater(t, served["node1/0"], 0, "%v", served)
	assert.Greater(t, served["node1/1"], 0, "%v", served)

	pid := engineNotOn(t, c.EngineSocket)
	require.NotZero(t, pid, "the second engine")
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	require.Eventually(t, func() bool { return states() == "node1/0=ready/1 node1/1=not ready/1" }, 5*time.Second, 20*time.Millisecond, "replicas: %s", states())
	require.Eventually(t, func() bool { return states() == "node1/0=ready/1 node1/1=ready/1" }, 30*time.Second, 20*time.Millisecond, "replicas: %s", states())
	c = waitConnState(t, dir, jobfiles.StateReady, time.Second)
	assert.Equal(t, 1, c.Replicas[1].Restarts)
	stopped = true
	for _, err := range stopNodes(t, runs) {
		require.NoError(t, err)
	}
	assertNoChildren(t)
}

// servedBy sends n requests to the job's gateway and counts the replicas that answered them.
func servedBy(t *testing.T, c jobfiles.Connection, n int) map[string]int {
	t.Helper()
	key, err := os.ReadFile(c.APIKeyFile)
	require.NoError(t, err)
	served := map[string]int{}
	for range n {
		req, _ := http.NewRequest(http.MethodGet, c.BaseURL+"/models", nil)
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(key)))
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		served[resp.Header.Get(gateway.ReplicaHeader)]++
	}
	return served
}
