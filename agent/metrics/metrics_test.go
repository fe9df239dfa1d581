package metrics

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/supervisor"
)

var t0 = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

func TestAgentCollector(t *testing.T) {
	s := NewState("node1", "42", "head", 8, 108.6, t0, t0.Add(2*time.Hour))
	s.SetChild("vllm", "running", t0.Add(10*time.Second))
	s.AddRestart("vllm", "exited")
	s.AddRestart("vllm", "exited")
	s.AddRestart("vllm", "unhealthy")
	s.SetChild("ray", "backoff", t0)
	s.SetRayNodes(2, 3)
	s.SetReady(true, "", t0.Add(90*time.Second))
	now := t0.Add(30 * time.Minute)
	c := NewAgentCollector(s, func() time.Time { return now })

	want := `
# HELP llm_agent_child_restarts_total Restarts of the child process by reason.
# TYPE llm_agent_child_restarts_total counter
llm_agent_child_restarts_total{child="vllm",job="42",node="node1",reason="exited"} 2
llm_agent_child_restarts_total{child="vllm",job="42",node="node1",reason="unhealthy"} 1
# HELP llm_agent_child_up 1 while the child process runs.
# TYPE llm_agent_child_up gauge
llm_agent_child_up{child="ray",job="42",node="node1"} 0
llm_agent_child_up{child="vllm",job="42",node="node1"} 1
# HELP llm_agent_child_uptime_seconds Seconds since the child process last started; 0 when it is not running.
# TYPE llm_agent_child_uptime_seconds gauge
llm_agent_child_uptime_seconds{child="ray",job="42",node="node1"} 0
llm_agent_child_uptime_seconds{child="vllm",job="42",node="node1"} 1790
# HELP llm_agent_gpu_seconds_total GPU-seconds the job has held so far: wall seconds times GPUs.
# TYPE llm_agent_gpu_seconds_total counter
llm_agent_gpu_seconds_total{job="42",node="node1"} 14400
# HELP llm_agent_job_end_time_seconds Unix time of the Slurm job's end.
# TYPE llm_agent_job_end_time_seconds gauge
llm_agent_job_end_time_seconds{job="42",node="node1"} 1.7957016e+09
# HELP llm_agent_job_remaining_seconds Seconds until the Slurm job's end time.
# TYPE llm_agent_job_remaining_seconds gauge
llm_agent_job_remaining_seconds{job="42",node="node1"} 5400
# HELP llm_agent_ray_nodes_alive Ray nodes alive, as the head last saw them.
# TYPE llm_agent_ray_nodes_alive gauge
llm_agent_ray_nodes_alive{job="42",node="node1"} 2
# HELP llm_agent_ray_nodes_expected Ray nodes the job expects: one per Slurm node.
# TYPE llm_agent_ray_nodes_expected gauge
llm_agent_ray_nodes_expected{job="42",node="node1"} 3
# HELP llm_agent_ready 1 while the service is ready (head) or this node's part is up (worker).
# TYPE llm_agent_ready gauge
llm_agent_ready{job="42",node="node1"} 1
# HELP llm_agent_service_units_total Service units consumed so far: wall hours times GPUs times the SU factor.
# TYPE llm_agent_service_units_total counter
llm_agent_service_units_total{job="42",node="node1"} 434.4
# HELP llm_agent_time_to_ready_seconds Seconds from agent start to the first time the service was ready.
# TYPE llm_agent_time_to_ready_seconds gauge
llm_agent_time_to_ready_seconds{job="42",node="node1"} 90
`
	names := []string{"llm_agent_child_restarts_total", "llm_agent_child_up", "llm_agent_child_uptime_seconds",
		"llm_agent_gpu_seconds_total", "llm_agent_job_end_time_seconds", "llm_agent_job_remaining_seconds",
		"llm_agent_ray_nodes_alive", "llm_agent_ray_nodes_expected", "llm_agent_ready",
		"llm_agent_service_units_total", "llm_agent_time_to_ready_seconds"}
	require.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(want), names...))

	// The state series: exactly one state is 1 per child.
	n, err := testutil.GatherAndCount(registry(c), "llm_agent_child_state")
	require.NoError(t, err)
	assert.Equal(t, 2*len(supervisor.States), n)
	assert.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(`
# HELP llm_agent_info Always 1; labels describe the agent.
# TYPE llm_agent_info gauge
llm_agent_info{job="42",node="node1",role="head"} 1
`), "llm_agent_info"))
}

func registry(c prometheus.Collector) *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(c)
	return r
}

func TestCollectorOmitsUnknowns(t *testing.T) {
	s := NewState("n2", "7", "worker", 0, 1, t0, time.Time{})
	c := NewAgentCollector(s, nil)
	for _, name := range []string{"llm_agent_job_remaining_seconds", "llm_agent_ray_nodes_alive", "llm_agent_time_to_ready_seconds"} {
		n, err := testutil.GatherAndCount(registry(c), name)
		require.NoError(t, err)
		assert.Zero(t, n, name)
	}
	problems, err := testutil.CollectAndLint(c)
	require.NoError(t, err)
	assert.Empty(t, problems)
}

func TestStateReadiness(t *testing.T) {
	s := NewState("n", "1", "head", 1, 1, t0, time.Time{})
	ready, why := s.Ready()
	assert.False(t, ready)
	assert.Equal(t, "starting", why)
	s.SetReady(true, "", t0.Add(time.Minute))
	s.SetReady(false, "engine backoff", t0.Add(2*time.Minute))
	s.SetReady(true, "", t0.Add(3*time.Minute))
	snap := s.Snapshot()
	assert.Equal(t, t0.Add(time.Minute), snap.FirstReadyAt, "time to ready counts the first time")
	assert.Equal(t, t0.Add(3*time.Minute), snap.ReadyAt)
	s.SetChild("vllm", "running", t0)
	s.SetChild("vllm", "running", t0.Add(time.Hour))
	assert.Equal(t, t0, s.Snapshot().Children["vllm"].Since, "still running: uptime keeps its start")
	node, job, role := s.Labels()
	assert.Equal(t, []string{"n", "1", "head"}, []string{node, job, role})
}

func TestHandlerAndServe(t *testing.T) {
	s := NewState("n", "1", "head", 1, 1, t0, time.Time{})
	reg := registry(NewAgentCollector(s, nil))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, Handler(reg, s, nil)) }()
	base := "http://" + ln.Addr().String()
	get := func(path string) (int, string) {
		resp, err := http.Get(base + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := get("/healthz")
	assert.Equal(t, 200, code)
	assert.Equal(t, "ok\n", body)
	code, body = get("/readyz")
	assert.Equal(t, 503, code)
	assert.Equal(t, "not ready\n", body, "no reason on a port the cluster network reaches")
	s.SetReady(true, "", time.Now())
	code, _ = get("/readyz")
	assert.Equal(t, 200, code)
	code, body = get("/metrics")
	assert.Equal(t, 200, code)
	assert.Contains(t, body, "llm_agent_ready")
	code, _ = get("/other")
	assert.Equal(t, 404, code)

	// A file the agent cannot write (a full disk): named on /healthz, without the error's
	// paths, and counted, until a write succeeds.
	s.SetWriteError("connection.json", errors.New("write /home/alice/.llm-agent/jobs/7/connection.json: no space left on device"))
	s.SetWriteError("connection.json", errors.New("again"))
	code, body = get("/healthz")
	assert.Equal(t, 200, code, "the agent lives")
	assert.Equal(t, "ok\nwarning: cannot write connection.json in the state directory\n", body)
	files := NewFileCollector(s)
	require.NoError(t, testutil.CollectAndCompare(files, strings.NewReader(`
# HELP llm_agent_state_write_errors_total Writes of the state directory's file that failed.
# TYPE llm_agent_state_write_errors_total counter
llm_agent_state_write_errors_total{file="connection.json",job="1",node="n"} 2
# HELP llm_agent_state_write_ok 1 while the last write of the state directory's file succeeded; 0 after one failed (a full disk: the file keeps its last whole version).
# TYPE llm_agent_state_write_ok gauge
llm_agent_state_write_ok{file="connection.json",job="1",node="n"} 0
`)))
	s.SetWriteError("connection.json", nil)
	_, body = get("/healthz")
	assert.Equal(t, "ok\n", body, "the disk takes writes again")
	cancel()
	assert.NoError(t, <-done)

	// A listener that fails makes Serve return the error.
	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	ln2.Close()
	assert.Error(t, Serve(context.Background(), ln2, Handler(reg, s, nil)))
}
