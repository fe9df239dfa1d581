//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/agent/status"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/vllm"
)

// threeNodes asks for every node of the mini-cluster, with both fake GPUs of each.
func threeNodes(extra ...string) []string {
	return append([]string{"-N", fmt.Sprint(suite.nodes), "--gpus-per-node=2", "--cpus-per-task=1"}, extra...)
}

// TestMultiNodeLifecycle runs one three-node job through the happy path and every fault the
// supervisor must absorb, then cancels it. Each step is a subtest that asserts what it names.
func TestMultiNodeLifecycle(t *testing.T) {
	j := submit(t, jobSpec{script: "multinode.sbatch", sbatch: threeNodes()})
	c := j.waitState(jobfiles.StateReady, readyTimeout)
	key := j.apiKey(c)

	t.Run("happy path", func(t *testing.T) {
		resp, body := chat(t, c.BaseURL, key, c.ServedModelName, false)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
		var out struct {
			Choices []struct {
				Message struct{ Content string } `json:"message"`
			} `json:"choices"`
			Usage struct {
				CompletionTokens int `json:"completion_tokens"`
			} `json:"usage"`
		}
		decodeJSON(t, body, &out)
		require.Len(t, out.Choices, 1)
		assert.NotEmpty(t, out.Choices[0].Message.Content)
		assert.Equal(t, 8, out.Usage.CompletionTokens)

		resp, body = chat(t, c.BaseURL, "", c.ServedModelName, false)
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "no key: %s", body)
		resp, body = chat(t, c.BaseURL, "sk-wrong", c.ServedModelName, false)
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "wrong key: %s", body)

		// Streamed: chunks arrive one by one, not in one piece at the end (20 ms per token).
		resp, _ = chat(t, c.BaseURL, key, c.ServedModelName, true)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		events := readSSE(t, resp.Body)
		resp.Body.Close()
		require.GreaterOrEqual(t, len(events), 10, "role chunk, 8 tokens, finish, usage, [DONE]")
		assert.Equal(t, "[DONE]", events[len(events)-1].data)
		spread := events[len(events)-1].at.Sub(events[0].at)
		assert.Greater(t, spread, 100*time.Millisecond, "chunks were buffered: all arrived within %s", spread)
		var usage struct {
			Usage struct {
				CompletionTokens int `json:"completion_tokens"`
			} `json:"usage"`
		}
		require.NoError(t, json.Unmarshal([]byte(events[len(events)-2].data), &usage))
		assert.Equal(t, 8, usage.Usage.CompletionTokens, "final usage chunk")

		// Every node's metrics port answers with the agent's metrics, its children's and the
		// node's, clean by promtool's rules; the head's also passes the engine's own through.
		require.Len(t, c.Metrics, suite.nodes)
		for _, ep := range c.Metrics {
			text := metricsText(t, ep.MetricsURL)
			assert.Contains(t, text, "llm_agent_info{", ep.Node)
			assert.Contains(t, text, `llm_agent_child_up{child="ray"`, ep.Node)
			assert.Contains(t, text, `llm_agent_gpu_up{job="`+j.id+`",node="`+ep.Node+`"} 0`, "no NVIDIA driver here: GPU metrics are down, the node is fine")
			children := []string{"ray"}
			if ep.Role == "head" {
				children = append(children, "vllm")
			}
			for _, child := range children {
				labels := `{child="` + child + `",job="` + j.id + `",node="` + ep.Node + `"}`
				assert.Greater(t, metricFloat(t, text, "llm_agent_child_resident_memory_bytes"+labels), float64(1<<20), "%s's %s holds memory", ep.Node, child)
				assert.GreaterOrEqual(t, metricFloat(t, text, "llm_agent_child_processes"+labels), 1.0)
				assert.Greater(t, metricFloat(t, text, "llm_agent_child_threads"+labels), 0.0)
				assert.Greater(t, metricFloat(t, text, "llm_agent_child_open_fds"+labels), 0.0)
				cpu := metricFloat(t, text, "llm_agent_child_cpu_seconds_total"+labels)
				if child == "ray" { // Python starting Ray's daemons; the stand-in engine may still be under a tick
					assert.Greater(t, cpu, 0.5)
				}
			}
			assert.Greater(t, metricFloat(t, text, `llm_agent_node_memory_available_bytes{job="`+j.id+`",node="`+ep.Node+`"}`), 0.0)
			assert.Greater(t, metricFloat(t, text, `llm_agent_memory_limit_bytes{job="`+j.id+`",node="`+ep.Node+`"}`), 0.0)
			assert.Greater(t, metricFloat(t, text, "process_resident_memory_bytes"), 0.0, "the agent's own process")
			assert.Greater(t, metricFloat(t, text, "go_goroutines"), 0.0)
			assert.Empty(t, promtoolCheck(t, text), "promtool check metrics on %s", ep.MetricsURL)
			assert.NotContains(t, text, "vllm:", "the engine's series are a target of their own")
			if ep.Role == "head" {
				require.NotEmpty(t, ep.EngineMetricsURL)
				engine := metricsText(t, ep.EngineMetricsURL)
				for _, name := range vllm.MetricNames {
					assert.Contains(t, engine, "\n"+name, "the engine's own %s", name)
				}
				assert.Contains(t, engine, `vllm:generation_tokens_total{engine="0",model_name="`+c.ServedModelName+`"}`)
			} else {
				assert.Empty(t, ep.EngineMetricsURL)
			}
		}

		// targets.json, for a login-node Prometheus, lists every node with its labels.
		b, err := os.ReadFile(filepath.Join(j.stateDir, jobfiles.TargetsFile))
		require.NoError(t, err)
		var groups []struct {
			Targets []string          `json:"targets"`
			Labels  map[string]string `json:"labels"`
		}
		require.NoError(t, json.Unmarshal(b, &groups))
		// One group per node, and the head's engine as a target of its own on the head's port.
		require.Len(t, groups, suite.nodes+1)
		require.Equal(t, "engine", groups[1].Labels["role"])
		assert.Equal(t, map[string]string{"job_id": j.id, "node": "node1", "role": "engine", "__metrics_path__": "/metrics/engine"}, groups[1].Labels)
		assert.Equal(t, groups[0].Targets, groups[1].Targets)
		nodeGroups := append(groups[:1:1], groups[2:]...)
		for i, g := range nodeGroups {
			assert.Equal(t, fmt.Sprintf("node%d", i+1), g.Labels["node"])
			assert.Equal(t, j.id, g.Labels["job_id"])
			assert.Equal(t, map[bool]string{true: "head", false: "worker"}[i == 0], g.Labels["role"])
			require.Len(t, g.Targets, 1)
			assert.Equal(t, strings.TrimSuffix(strings.TrimPrefix(c.Metrics[i].MetricsURL, "http://"), "/metrics"), g.Targets[0])
		}

		// llm-agent status reads the same and exits 0 when ready.
		statusOut, err := exec.Command(suite.agentBin, "status", "--json", j.stateDir).Output()
		require.NoError(t, err, "status exits 0 when ready: %s", statusOut)
		var report status.Report
		require.NoError(t, json.Unmarshal(statusOut, &report))
		assert.True(t, report.Ready)
		assert.Equal(t, 6, report.GPUs)
		assert.Len(t, report.Nodes, suite.nodes)

		// Ray on the head sees exactly the job's nodes.
		requireRayStatusNodes(t, c, suite.nodes)

		// The head is the first host of the job's node list, as scontrol expands it.
		assert.Equal(t, firstHost(t, j.id), c.HeadHost)
		assert.Contains(t, c.SSHTunnel, fmt.Sprintf("ssh -N -L %d:%s:%d", c.Port, c.HeadHost, c.Port))
		assert.Contains(t, c.SSHTunnel, "@login.example")
	})

	t.Run("engine killed", func(t *testing.T) {
		pids := pidsByComm(t, 1, "fakevllm")
		require.Len(t, pids, 1)
		require.NoError(t, exec.Command("kill", "-KILL", pids[0]).Run())
		j.waitState(jobfiles.StateRestarting, 30*time.Second)
		c := j.waitState(jobfiles.StateReady, readyTimeout)
		assert.Equal(t, 1, c.Restarts["vllm"])
		text := metricsText(t, c.Metrics[0].MetricsURL)
		v, ok := metricValue(text, `llm_agent_child_restarts_total{child="vllm",job="`+j.id+`",node="node1",reason="exited"}`)
		assert.True(t, ok, "restart counter exported")
		assert.Equal(t, "1", v)
		resp, body := chat(t, c.BaseURL, key, c.ServedModelName, false)
		assert.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	})

	t.Run("engine hung", func(t *testing.T) {
		pids := pidsByComm(t, 1, "fakevllm")
		require.Len(t, pids, 1)
		stopped := time.Now()
		require.NoError(t, exec.Command("kill", "-STOP", pids[0]).Run())
		j.waitState(jobfiles.StateRestarting, 60*time.Second)
		verdict := time.Since(stopped)
		c := j.waitState(jobfiles.StateReady, readyTimeout)
		// The liveness watch runs with its defaults (5 s probes, 10 s timeout, hung after 30 s).
		t.Logf("BENCH hang detection stand-in: SIGSTOP to not ready %.1f s, to ready again %.1f s", verdict.Seconds(), time.Since(stopped).Seconds())
		assert.Less(t, time.Since(stopped), 45*time.Second, "a hung engine is restarted and ready within 45 s")
		assert.Equal(t, 2, c.Restarts["vllm"])
		text := metricsText(t, c.Metrics[0].MetricsURL)
		v, _ := metricValue(text, `llm_agent_child_restarts_total{child="vllm",job="`+j.id+`",node="node1",reason="unhealthy"}`)
		assert.Equal(t, "1", v, "the liveness probe caused the restart")
		assert.NotContains(t, pidsByComm(t, 1, "fakevllm"), pids[0], "the hung engine is gone")
	})

	t.Run("worker ray node killed", func(t *testing.T) {
		raylets := pidsByComm(t, 2, "raylet")
		require.Len(t, raylets, 1)
		require.NoError(t, exec.Command("kill", "-KILL", raylets[0]).Run())
		j.waitState(jobfiles.StateRestarting, 60*time.Second)
		c := j.waitState(jobfiles.StateReady, readyTimeout)
		requireRayStatusNodes(t, c, suite.nodes)
		worker := metricsText(t, c.Metrics[1].MetricsURL)
		v, _ := metricValue(worker, `llm_agent_child_restarts_total{child="ray"`)
		assert.Equal(t, "1", v, "the worker restarted its Ray")
		resp, body := chat(t, c.BaseURL, key, c.ServedModelName, false)
		assert.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	})

	t.Run("scancel", func(t *testing.T) {
		before, _ := j.conn()
		start := time.Now()
		require.NoError(t, exec.Command("scancel", j.id).Run())
		after := j.waitState(jobfiles.StateStopped, drainBound)
		// A drain is not a crash: the children Slurm stopped are neither restarted nor counted.
		assert.Equal(t, before.Restarts, after.Restarts, "restart counters after scancel")
		// The agents' own drain lines (Ray's state dumps say "draining" too).
		drain := j.outputText()
		i := strings.Index(drain, "llm-agent: draining")
		require.GreaterOrEqual(t, i, 0, "the agents logged their drain")
		assert.NotContains(t, drain[i:], "restarting:", "no restart during the drain")
		requireNoProcesses(t, drainBound-time.Since(start))
		t.Logf("scancel to no process left: %s", time.Since(start).Round(time.Millisecond))
		assert.Equal(t, "CANCELLED", j.waitEnded(time.Minute))
		assertNoRayTempDirs(t, j.id)
	})
}

// requireRayStatusNodes waits until `ray status` on the head, run as the owner would run it
// (with the job's token), lists want active nodes. Its view is the autoscaler's last report,
// which trails the GCS by a few seconds.
func requireRayStatusNodes(t *testing.T, c jobfiles.Connection, want int) {
	t.Helper()
	require.NotEmpty(t, c.RayTokenFile, "the connection file names the Ray token")
	var out []byte
	ok := assertEventually(30*time.Second, func() bool {
		var err error
		cmd := inNamespace(1, filepath.Join(suite.venv, "bin", "ray"), "status", "--address", c.RayAddress)
		cmd.Env = append(os.Environ(), "RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN_PATH="+c.RayTokenFile)
		out, err = cmd.CombinedOutput()
		return err == nil && countActiveRayNodes(string(out)) == want
	})
	require.True(t, ok, "ray status at %s never showed %d nodes:\n%s", c.RayAddress, want, out)
}

func countActiveRayNodes(status string) int {
	n := 0
	in := false
	for _, line := range strings.Split(status, "\n") {
		switch {
		case strings.HasPrefix(line, "Active:"):
			in = true
		case strings.HasPrefix(line, "Pending:"):
			in = false
		case in && strings.Contains(line, "node_"):
			n++
		}
	}
	return n
}

func firstHost(t *testing.T, id string) string {
	t.Helper()
	return jobHosts(t, id)[0]
}

// assertNoRayTempDirs checks that no node keeps the job's Ray directory in its /tmp.
func assertNoRayTempDirs(t *testing.T, id string) {
	t.Helper()
	for i := 1; i <= suite.nodes; i++ {
		pids, err := exec.Command("ip", "netns", "pids", fmt.Sprintf("llmnode%d", i)).Output()
		require.NoError(t, err)
		f := strings.Fields(string(pids))
		if len(f) == 0 {
			continue
		}
		// Look through slurmd's mount namespace, where the node's /tmp is.
		tmp := filepath.Join("/proc", f[0], "root", "tmp")
		left, err := filepath.Glob(filepath.Join(tmp, "llm-agent-"+id+"-*"))
		require.NoError(t, err)
		assert.Empty(t, left, "node%d still has the job's private directory", i)
		assert.NoDirExists(t, filepath.Join(tmp, "ray"), "node%d has Ray's shared /tmp/ray", i)
	}
}

// TestCrashLoopFailsJob makes the engine fail at every start: the agent gives up after its
// bounded restarts, the job fails with the reason, and nothing is left running.
func TestCrashLoopFailsJob(t *testing.T) {
	j := submit(t, jobSpec{
		script:  "multinode.sbatch",
		sbatch:  []string{"-N", "2", "--gpus-per-node=1", "--cpus-per-task=1"},
		agent:   []string{"--max-restarts", "3", "--backoff-initial", "200ms"},
		control: "fail-start",
	})
	c := j.waitState(jobfiles.StateFailed, readyTimeout)
	assert.Contains(t, c.Reason, "gave up after 3 restarts")
	assert.Contains(t, c.Reason, "exit status 1")
	assert.Equal(t, 3, c.Restarts["vllm"])
	assert.Equal(t, "FAILED", j.waitEnded(time.Minute))
	assert.Contains(t, j.outputText(), "injected fail-start")
	requireNoProcesses(t, drainBound)
}

// TestWorkerAgentKilledFailsJob: a worker's agent killed with SIGKILL ends the job as failed,
// with a reason naming the node, not as stopped; nothing is left running.
func TestWorkerAgentKilledFailsJob(t *testing.T) {
	j := submit(t, jobSpec{script: "multinode.sbatch", sbatch: []string{"-N", "2", "--gpus-per-node=1", "--cpus-per-task=1"}})
	j.waitState(jobfiles.StateReady, readyTimeout)
	var agents []string
	for _, pid := range pidsByCmdline(t, 2, suite.agentBin) {
		b, err := os.ReadFile("/proc/" + pid + "/cmdline")
		if err == nil && len(strings.Split(string(b), "\x00")) > 1 && strings.Split(string(b), "\x00")[1] == "run" {
			agents = append(agents, pid)
		}
	}
	require.Len(t, agents, 1, "node2's agent")
	require.NoError(t, exec.Command("kill", "-KILL", agents[0]).Run())
	c := j.waitState(jobfiles.StateFailed, drainBound)
	assert.Contains(t, c.Reason, "node2's agent ended")
	assert.Contains(t, c.Reason, "Slurm ended the job step")
	t.Logf("reason: %s", c.Reason)
	requireNoProcesses(t, drainBound)
}

// TestTimeLimitDrains gives a job one minute: Slurm's signal drains it and nothing is left.
//
// slurmctld checks for warning signals every 30 s and sends one when the end is at most
// warn+30 s away, so --signal=TERM@W arrives between 30+W and W seconds before the end. W=1
// puts it 29 to 59 s into the one-minute job, after the job is ready (about 10 s). The
// script's own TERM@120 would arrive at once. (W=20 once came 10 s in, before ready.)
func TestTimeLimitDrains(t *testing.T) {
	j := submit(t, jobSpec{
		script: "multinode.sbatch",
		sbatch: []string{"-N", "2", "--gpus-per-node=1", "--cpus-per-task=1", "--time=1", "--signal=TERM@1"},
	})
	j.waitState(jobfiles.StateReady, readyTimeout)
	c := j.waitState(jobfiles.StateStopped, 3*time.Minute)
	assert.Empty(t, c.Reason)
	st := j.waitEnded(time.Minute)
	assert.Contains(t, []string{"COMPLETED", "TIMEOUT"}, st)
	requireNoProcesses(t, drainBound)
	assert.Contains(t, j.outputText(), "draining")
}

// TestWarningSignalDrains: a warning signal other than TERM (a job's --signal=USR1@..., here
// scancel -s USR1, which Slurm sends to every process of the step) drains the job like SIGTERM:
// the agents' default would be to die of it without a word, leaving the file saying ready.
func TestWarningSignalDrains(t *testing.T) {
	j := submit(t, jobSpec{script: "multinode.sbatch", sbatch: []string{"-N", "2", "--gpus-per-node=1", "--cpus-per-task=1"}})
	j.waitState(jobfiles.StateReady, readyTimeout)
	require.NoError(t, exec.Command("scancel", "-s", "USR1", j.id).Run())
	c := j.waitState(jobfiles.StateStopped, drainBound)
	assert.Empty(t, c.Reason)
	assert.Equal(t, "COMPLETED", j.waitEnded(time.Minute), "every agent drained and exited 0")
	requireNoProcesses(t, drainBound)
	assert.Contains(t, j.outputText(), "draining")
}

// TestTwoJobsShareNodes runs two jobs on the same nodes at once, one GPU each: both come up on
// their own ports and neither's Ray sees the other's nodes.
func TestTwoJobsShareNodes(t *testing.T) {
	spec := jobSpec{script: "multinode.sbatch", sbatch: []string{"-N", fmt.Sprint(suite.nodes), "--gpus-per-node=1", "--cpus-per-task=1"}}
	a := submit(t, spec)
	b := submit(t, spec)
	ca := a.waitState(jobfiles.StateReady, readyTimeout)
	cb := b.waitState(jobfiles.StateReady, readyTimeout)
	assert.NotEqual(t, ca.Port, cb.Port)
	assert.NotEqual(t, ca.MetricsPort, cb.MetricsPort)
	assert.NotEqual(t, ca.RayAddress, cb.RayAddress)
	for _, x := range []struct {
		j *job
		c jobfiles.Connection
	}{{a, ca}, {b, cb}} {
		resp, body := chat(t, x.c.BaseURL, x.j.apiKey(x.c), x.c.ServedModelName, false)
		assert.Equal(t, http.StatusOK, resp.StatusCode, string(body))
		resp, _ = chat(t, x.c.BaseURL, "", x.c.ServedModelName, false)
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
		requireRayStatusNodes(t, x.c, suite.nodes)
	}
	// One job's key does not open the other.
	resp, _ := chat(t, ca.BaseURL, b.apiKey(cb), ca.ServedModelName, false)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	require.NoError(t, exec.Command("scancel", a.id, b.id).Run())
	a.waitState(jobfiles.StateStopped, drainBound)
	b.waitState(jobfiles.StateStopped, drainBound)
	requireNoProcesses(t, drainBound)
}

// TestBadInputEndsQuickly checks that mistakes end the job at once with the reason in its output.
func TestBadInputEndsQuickly(t *testing.T) {
	tests := []struct {
		name    string
		spec    jobSpec
		message string
	}{
		{"missing model path", jobSpec{script: "singlenode.sbatch", sbatch: []string{"--gpus-per-node=2", "--cpus-per-task=1"},
			noModel: true, agent: []string{"--model", "/nonexistent/model-dir"}}, `model directory "/nonexistent/model-dir" does not exist`},
		{"more models than nodes", jobSpec{script: "singlenode.sbatch", sbatch: []string{"--gpus-per-node=2", "--cpus-per-task=1"},
			agent: []string{"--model", "/nonexistent/model-dir"}}, "the models need 2 nodes, one per replica (tiny-test: at least 1, model-dir: at least 1), and this job has 1"},
		{"impossible parallelism", jobSpec{script: "multinode.sbatch", sbatch: []string{"-N", "2", "--gpus-per-node=2", "--cpus-per-task=1"},
			agent: []string{"--tensor-parallel-size", "4"}}, "tensor parallel 4 exceeds the 2 GPUs of a node"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			j := submit(t, tt.spec)
			assert.Equal(t, "FAILED", j.waitEnded(time.Minute))
			assert.Less(t, time.Since(start), 30*time.Second, "a bad input must fail fast")
			assert.Contains(t, j.outputText(), tt.message)
			requireNoProcesses(t, drainBound)
		})
	}
}

// TestLauncherWithoutRay runs the 3-node job with --launcher mp: no Ray on any node, one rank
// of the engine on each, rank 0 behind the gateway. A worker's rank killed restarts the group;
// scancel leaves nothing.
func TestLauncherWithoutRay(t *testing.T) {
	j := submit(t, jobSpec{script: "multinode.sbatch", sbatch: []string{"-N", fmt.Sprint(suite.nodes), "--gpus-per-node=1", "--cpus-per-task=1"},
		agent: []string{"--launcher", "mp", "--tensor-parallel-size", "1", "--pipeline-parallel-size", fmt.Sprint(suite.nodes)}})
	c := j.waitState(jobfiles.StateReady, readyTimeout)
	key := j.apiKey(c)
	assert.Equal(t, "mp", c.Launcher)
	assert.Empty(t, c.RayAddress)
	resp, body := chat(t, c.BaseURL, key, c.ServedModelName, false)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	var out struct {
		Fingerprint string `json:"system_fingerprint"`
	}
	require.NoError(t, json.Unmarshal(body, &out))
	assert.Equal(t, fmt.Sprintf("fakevllm-pp%d", suite.nodes), out.Fingerprint, "the pipeline spans every node's rank")
	for n := 1; n <= suite.nodes; n++ {
		assert.Len(t, pidsByComm(t, n, "fakevllm"), 1, "one rank on node%d", n)
		for _, ray := range []string{"raylet", "gcs_server"} {
			assert.Empty(t, pidsByComm(t, n, ray), "no %s on node%d", ray, n)
		}
	}
	text := metricsText(t, c.Metrics[1].MetricsURL)
	assert.Contains(t, text, `llm_agent_child_up{child="vllm",job="`+j.id+`",node="node2"} 1`, "the worker runs its rank")
	assert.Contains(t, text, `llm_agent_ready{job="`+j.id+`",node="node2"} 1`)

	// A worker's rank killed: the group restarts, generation 2.
	rank := pidsByComm(t, 2, "fakevllm")
	require.Len(t, rank, 1)
	require.NoError(t, exec.Command("kill", "-KILL", rank[0]).Run())
	// Rank 0 fails with the rank it lost, or the head restarts it on node2's report: either
	// way the group restarts once.
	j.waitState(jobfiles.StateRestarting, time.Minute)
	c = j.waitState(jobfiles.StateReady, readyTimeout)
	assert.Equal(t, 1, c.Restarts["vllm"])
	require.Eventually(t, func() bool {
		r := pidsByComm(t, 2, "fakevllm")
		return len(r) == 1 && r[0] != rank[0]
	}, time.Minute, 100*time.Millisecond, "node2 runs the rank of the new generation")
	resp, body = chat(t, c.BaseURL, key, c.ServedModelName, false)
	assert.Equal(t, http.StatusOK, resp.StatusCode, string(body))

	start := time.Now()
	require.NoError(t, exec.Command("scancel", j.id).Run())
	after := j.waitState(jobfiles.StateStopped, drainBound)
	assert.Equal(t, c.Restarts, after.Restarts, "a drain is not a restart")
	requireNoProcesses(t, drainBound-time.Since(start))
}
