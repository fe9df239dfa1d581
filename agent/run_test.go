package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/node"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/slurm"
	"github.com/llm-agent/llm-agent/supervisor"
)

// lockedBuffer collects log output from many goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// testLogger logs into a buffer that is printed only when the test fails.
func testLogger(t *testing.T) (hclog.Logger, *lockedBuffer) {
	buf := &lockedBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log:\n%s", buf.String())
		}
	})
	return hclog.New(&hclog.LoggerOptions{Output: buf, Level: hclog.Debug}), buf
}

func testConfig(t *testing.T, stateDir string) config.Config {
	t.Helper()
	rayBin, vllmBin := fakeBins(t)
	c := config.Default()
	c.Model = t.TempDir()
	c.ServedModelName = "tiny"
	c.RayBin, c.VLLMBin = rayBin, vllmBin
	c.StateDir = stateDir
	c.TargetsDir = filepath.Join(stateDir, "shared-targets")
	c.Iface = "lo"
	c.ProbeInterval = 100 * time.Millisecond
	c.ProbeTimeout = time.Second
	c.HangAfter = 2 * time.Second
	c.RayPollInterval = 100 * time.Millisecond
	c.BackoffInitial = 20 * time.Millisecond
	c.BackoffMax = 100 * time.Millisecond
	c.Grace = 4 * time.Second
	c.RendezvousTimeout = 20 * time.Second
	c.RayTimeout = 20 * time.Second
	c.EngineTimeout = 20 * time.Second
	return c
}

func testDeps(t *testing.T, env map[string]string, host string) Deps {
	log, _ := testLogger(t)
	env["HOME"] = t.TempDir()
	return Deps{
		Logger:   log.With("test_node", host),
		Getenv:   func(k string) string { return env[k] },
		Hostname: host,
		Net:      loopbackNet{},
		Ports:    node.TCPProber{},
		Notice:   io.Discard,
	}
}

// agentRun runs Run in the background.
type agentRun struct {
	cancel context.CancelFunc
	done   chan error
}

func startAgent(cfg config.Config, deps Deps) *agentRun {
	ctx, cancel := context.WithCancel(context.Background())
	r := &agentRun{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- Run(ctx, cfg, deps) }()
	return r
}

// startNodes starts one agent per node of job, node1 to nodeN, in this process: one GPU each,
// with extra added to every node's Slurm environment.
func startNodes(t *testing.T, cfg config.Config, job string, n int, extra map[string]string) []*agentRun {
	t.Helper()
	var runs []*agentRun
	for i := range n {
		env := map[string]string{"SLURM_JOB_ID": job, "SLURM_JOB_NODELIST": fmt.Sprintf("node[1-%d]", n),
			"SLURM_NODEID": fmt.Sprint(i), "SLURM_GPUS_ON_NODE": "1"}
		maps.Copy(env, extra)
		runs = append(runs, startAgent(cfg, testDeps(t, env, fmt.Sprintf("node%d", i+1))))
	}
	return runs
}

// stopNodes stops every agent at once, then waits for each; it returns their errors in order.
func stopNodes(t *testing.T, runs []*agentRun) []error {
	t.Helper()
	for _, r := range runs {
		r.cancel()
	}
	errs := make([]error, len(runs))
	for i, r := range runs {
		errs[i] = r.stop(t)
	}
	return errs
}

func (r *agentRun) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("agent did not stop")
		return nil
	}
}

func waitConnState(t *testing.T, dir string, want jobfiles.ServiceState, timeout time.Duration) jobfiles.Connection {
	t.Helper()
	var c jobfiles.Connection
	require.Eventually(t, func() bool {
		var err error
		c, err = jobfiles.ReadConnection(filepath.Join(dir, jobfiles.ConnectionFile))
		return err == nil && c.State == want
	}, timeout, 20*time.Millisecond, "connection state never became %s (last %q: %s)", want, c.State, c.Reason)
	return c
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	return getWithKey(t, url, "")
}

func TestRunSingleNodeLifecycle(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	argsFile := filepath.Join(t.TempDir(), "args")
	t.Setenv("FAKE_VLLM_ARGS", argsFile)
	cfg.VLLMArgs = []string{"--max-model-len", "4096"}
	deps := testDeps(t, map[string]string{"USER": "alice"}, "laptop")
	noDriver := dgxh100.New()
	noDriver.InitFunc = func() nvml.Return { return nvml.ERROR_LIBRARY_NOT_FOUND }
	deps.NVML = noDriver
	var notice bytes.Buffer
	deps.Notice = &notice
	run := startAgent(cfg, deps)

	c := waitConnState(t, dir, jobfiles.StateReady, 20*time.Second)
	assert.Contains(t, notice.String(), "running as a one-node allocation on laptop")
	assert.Equal(t, "tiny", c.ServedModelName)
	assert.Equal(t, 1, c.TensorParallel)
	assert.Equal(t, 1, c.PipelineParallel)
	assert.Equal(t, fmt.Sprintf("http://127.0.0.1:%d/v1", c.Port), c.BaseURL)
	assert.Equal(t, fmt.Sprintf("ssh -N -L %d:laptop:%d alice@LOGIN-HOST", c.Port, c.Port), c.SSHTunnel)
	assert.Empty(t, c.RayAddress, "one node runs without Ray")
	require.NotNil(t, c.ReadyAt)

	key, err := os.ReadFile(c.APIKeyFile)
	require.NoError(t, err)
	env, err := os.ReadFile(c.EnvFile)
	require.NoError(t, err)
	assert.Contains(t, string(env), "export OPENAI_BASE_URL='"+c.BaseURL+"'")
	assert.Contains(t, string(env), "export OPENAI_API_KEY='"+strings.TrimSpace(string(key))+"'")
	for _, f := range []string{jobfiles.ConnectionFile, jobfiles.ConnectionEnvFile, jobfiles.APIKeyFile} {
		fi, err := os.Stat(filepath.Join(dir, f))
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), f)
	}
	conn, _ := os.ReadFile(filepath.Join(dir, jobfiles.ConnectionFile))
	assert.NotContains(t, string(conn), strings.TrimSpace(string(key)), "the key stays out of connection.json")

	args, err := os.ReadFile(argsFile)
	require.NoError(t, err)
	argv := strings.Split(string(args), "\n")[1:]
	assert.Equal(t, []string{"--uds", c.EngineSocket}, argv[:2], "behind the gateway the engine listens on its socket only")
	assert.Zero(t, c.EnginePort, "no TCP port for the engine")
	sockDir, err := os.Stat(filepath.Dir(c.EngineSocket))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), sockDir.Mode().Perm(), "the socket's directory is private")
	assert.Equal(t, []string{"--served-model-name", "tiny", "--tensor-parallel-size", "1", "--pipeline-parallel-size", "1",
		"--max-model-len", "4096"}, argv[2:])
	assert.True(t, c.Gateway)

	code, body := get(t, c.Metrics[0].MetricsURL)
	assert.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, `llm_agent_ready{job="`+c.JobID+`",node="laptop"} 1`)
	assert.Contains(t, body, `llm_agent_gpu_up{job="`+c.JobID+`",node="laptop"} 0`, "no driver: the GPU collector is down, the agent runs on")
	assert.NotContains(t, body, "vllm:", "the engine's series are a target of their own")
	assert.Contains(t, body, `llm_agent_child_processes{child="vllm",job="`+c.JobID+`",node="laptop"} 1`, "the stand-in engine, no reaper")
	assert.Contains(t, body, "\nprocess_resident_memory_bytes ", "the agent's own process")
	assert.Contains(t, body, "\ngo_goroutines ")
	require.Equal(t, strings.TrimSuffix(c.Metrics[0].MetricsURL, "/metrics")+"/metrics/engine", c.Metrics[0].EngineMetricsURL)
	code, body = get(t, c.Metrics[0].EngineMetricsURL)
	assert.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, `vllm:num_requests_running{engine="0",model_name="tiny"} 0`, "as the engine wrote it")
	base := strings.TrimSuffix(c.Metrics[0].MetricsURL, "/metrics")
	code, _ = get(t, base+"/readyz")
	assert.Equal(t, http.StatusOK, code)
	code, _ = get(t, base+"/healthz")
	assert.Equal(t, http.StatusOK, code)
	targets, err := os.ReadFile(filepath.Join(cfg.TargetsDir, c.JobID+".json"))
	require.NoError(t, err)
	assert.Contains(t, string(targets), `"role": "head"`)
	assert.Contains(t, string(targets), `"__metrics_path__": "/metrics/engine"`)

	require.NoError(t, run.stop(t))
	c = waitConnState(t, dir, jobfiles.StateStopped, time.Second)
	assert.Empty(t, c.Reason)
	_, err = os.Stat(filepath.Join(cfg.TargetsDir, c.JobID+".json"))
	assert.True(t, os.IsNotExist(err), "targets withdrawn at the end")
	assert.NoDirExists(t, filepath.Dir(c.EngineSocket), "the private node-local directory is removed at the end")
	assertNoChildren(t)
}

// assertNoChildren checks that the test process has no child processes left.
func assertNoChildren(t *testing.T) {
	t.Helper()
	require.Eventually(t, func() bool {
		return len(childrenOf(os.Getpid())) == 0
	}, 10*time.Second, 20*time.Millisecond, "children left: %v", childrenOf(os.Getpid()))
}

func childrenOf(pid int) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 && f[1] == fmt.Sprint(pid) && f[0] != "Z" {
			var p int
			fmt.Sscan(e.Name(), &p)
			out = append(out, p)
		}
	}
	return out
}

func TestRunEngineUnhealthyIsRestarted(t *testing.T) {
	dir := t.TempDir()
	control := filepath.Join(t.TempDir(), "control")
	t.Setenv("FAKE_VLLM_CONTROL", control)
	cfg := testConfig(t, dir)
	run := startAgent(cfg, testDeps(t, map[string]string{}, "laptop"))
	waitConnState(t, dir, jobfiles.StateReady, 20*time.Second)
	require.NoError(t, os.WriteFile(control, []byte("unhealthy"), 0o644))
	c := waitConnState(t, dir, jobfiles.StateRestarting, 10*time.Second)
	assert.Contains(t, c.Reason, "the health probe has not passed for")
	require.NoError(t, os.WriteFile(control, nil, 0o644))
	c = waitConnState(t, dir, jobfiles.StateReady, 20*time.Second)
	assert.Equal(t, 1, c.Restarts["vllm"])
	code, body := get(t, c.Metrics[0].MetricsURL)
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, `llm_agent_child_restarts_total{child="vllm",job="`+c.JobID+`",node="laptop",reason="unhealthy"} 1`)
	require.NoError(t, run.stop(t))
	assertNoChildren(t)
}

func TestRunCrashLoopGivesUp(t *testing.T) {
	dir := t.TempDir()
	control := filepath.Join(t.TempDir(), "control")
	require.NoError(t, os.WriteFile(control, []byte("fail"), 0o644))
	t.Setenv("FAKE_VLLM_CONTROL", control)
	cfg := testConfig(t, dir)
	cfg.MaxRestarts = 2
	run := startAgent(cfg, testDeps(t, map[string]string{}, "laptop"))
	var err error
	select {
	case err = <-run.done:
	case <-time.After(30 * time.Second):
		t.Fatal("agent did not give up")
	}
	require.Error(t, err)
	assert.True(t, errors.Is(err, supervisor.ErrGaveUp), err)
	c := waitConnState(t, dir, jobfiles.StateFailed, time.Second)
	assert.Contains(t, c.Reason, "gave up after 2 restarts")
	assert.Contains(t, c.Reason, "exit status 1")
	assert.Contains(t, c.Reason, "the engine said: RuntimeError: injected start failure")
	assertNoChildren(t)
}

// TestRunGPUOutOfMemoryAtStart: an engine that runs out of GPU memory at its start fails the
// job with its own words and what to change.
func TestRunGPUOutOfMemoryAtStart(t *testing.T) {
	dir := t.TempDir()
	control := filepath.Join(t.TempDir(), "control")
	require.NoError(t, os.WriteFile(control, []byte("gpu-oom"), 0o644))
	t.Setenv("FAKE_VLLM_CONTROL", control)
	cfg := testConfig(t, dir)
	cfg.MaxRestarts = 1
	run := startAgent(cfg, testDeps(t, map[string]string{}, "laptop"))
	select {
	case err := <-run.done:
		require.ErrorIs(t, err, supervisor.ErrGaveUp)
		assert.ErrorContains(t, err, "the engine said: torch.OutOfMemoryError: CUDA out of memory")
	case <-time.After(30 * time.Second):
		t.Fatal("agent did not give up")
	}
	c := waitConnState(t, dir, jobfiles.StateFailed, time.Second)
	assert.Contains(t, c.Reason, "the engine said: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.")
	assert.Contains(t, c.Reason, "lower --max-model-len or --max-num-seqs")
	assert.Contains(t, c.Reason, "llm-agent plan --model "+cfg.Model+" --nodes 1 --gpus-per-node ")
	assertNoChildren(t)
}

// TestRunMultiNode runs a head and two workers in this process against the fake Ray, kills a
// worker's Ray, and checks that the worker rejoins and the head restarts the engine.
func TestRunMultiNode(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("FAKE_RAY_DIR", t.TempDir())
	cfg := testConfig(t, dir)
	runs := startNodes(t, cfg, "4242", 3, map[string]string{
		"SLURM_STEP_ID": "0", "SLURM_SUBMIT_HOST": "login1",
		"SLURM_SRUN_COMM_PORT": "4000", "SLURM_LAUNCH_NODE_IPADDR": "127.0.0.1",
		"SLURM_JOB_END_TIME": fmt.Sprint(time.Now().Add(time.Hour).Unix()), "USER": "bob",
	})
	c := waitConnState(t, dir, jobfiles.StateReady, 30*time.Second)
	assert.Equal(t, 1, c.TensorParallel)
	assert.Equal(t, 3, c.PipelineParallel)
	assert.Equal(t, "node1", c.HeadHost)
	assert.NotEmpty(t, c.RayAddress)
	assert.Contains(t, c.SSHTunnel, "bob@login1")
	require.NotNil(t, c.JobEndTime)
	rv, err := jobfiles.ReadRendezvous(dir)
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1:4000", rv.LaunchID)

	require.Eventually(t, func() bool {
		c, _ = jobfiles.ReadConnection(filepath.Join(dir, jobfiles.ConnectionFile))
		return len(c.Metrics) == 3
	}, 10*time.Second, 20*time.Millisecond)
	code, body := get(t, c.Metrics[0].MetricsURL)
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, `llm_agent_ray_nodes_alive{job="4242",node="node1"} 3`)
	assert.Contains(t, body, "llm_agent_job_remaining_seconds")

	// Kill one worker's fake Ray: its agent restarts it, and the head restarts the engine once
	// the new node has joined.
	workerRay := fakeRayPIDs(t, false)
	require.Len(t, workerRay, 2)
	require.NoError(t, syscall.Kill(workerRay[0], syscall.SIGKILL))
	c = waitConnState(t, dir, jobfiles.StateRestarting, 10*time.Second)
	assert.Contains(t, c.Reason, "ray lost node")
	c = waitConnState(t, dir, jobfiles.StateReady, 30*time.Second)
	assert.Equal(t, 1, c.Restarts["vllm"])
	assert.Len(t, fakeRayPIDs(t, false), 2)

	for _, err := range stopNodes(t, runs) {
		require.NoError(t, err)
	}
	waitConnState(t, dir, jobfiles.StateStopped, time.Second)
	assertNoChildren(t)
}

// fakeRayPIDs lists the live fake Ray nodes, workers or the head.
func fakeRayPIDs(t *testing.T, head bool) []int {
	t.Helper()
	var pids []int
	entries, _ := os.ReadDir(os.Getenv("FAKE_RAY_DIR"))
	for _, e := range entries {
		var n fakeNode
		b, err := os.ReadFile(filepath.Join(os.Getenv("FAKE_RAY_DIR"), e.Name()))
		if err != nil || json.Unmarshal(b, &n) != nil {
			continue
		}
		if n.Head == head && syscall.Kill(n.PID, 0) == nil {
			pids = append(pids, n.PID)
		}
	}
	return pids
}

func TestRunWorkerRendezvousTimeout(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.RendezvousTimeout = 300 * time.Millisecond
	env := map[string]string{"SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_NODEID": "1"}
	err := Run(context.Background(), cfg, testDeps(t, env, "node2"))
	require.ErrorIs(t, err, jobfiles.ErrRendezvousTimeout)
	assert.Contains(t, err.Error(), "no rendezvous from head node1")
}

func TestRunWorkerStopsWhileWaiting(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	env := map[string]string{"SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_NODEID": "1"}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	assert.NoError(t, Run(ctx, cfg, testDeps(t, env, "node2")))
}

func TestRunRayIncompleteNamesMissingNodes(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("FAKE_RAY_DIR", t.TempDir())
	cfg := testConfig(t, dir)
	cfg.RayTimeout = time.Second
	env := map[string]string{"SLURM_JOB_ID": "31", "SLURM_JOB_NODELIST": "gpu[01-03]", "SLURM_NODEID": "0"}
	err := Run(context.Background(), cfg, testDeps(t, env, "gpu01"))
	require.ErrorIs(t, err, ErrRayIncomplete)
	assert.Contains(t, err.Error(), "nodes that never joined: gpu02, gpu03")
	c := waitConnState(t, dir, jobfiles.StateFailed, time.Second)
	assert.Contains(t, c.Reason, "gpu02, gpu03")
	assertNoChildren(t)
}

func TestRunBadInput(t *testing.T) {
	unwritable := filepath.Join(t.TempDir(), "ro")
	require.NoError(t, os.Mkdir(unwritable, 0o500))
	notDir := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(notDir, nil, 0o600))
	groupWritable := filepath.Join(t.TempDir(), "gw")
	require.NoError(t, os.Mkdir(groupWritable, 0o700))
	require.NoError(t, os.Chmod(groupWritable, 0o770))
	linked := filepath.Join(t.TempDir(), "linked")
	require.NoError(t, os.Symlink(t.TempDir(), linked))
	plantedLogs := t.TempDir()
	require.NoError(t, os.Symlink(t.TempDir(), filepath.Join(plantedLogs, "logs")))
	tests := []struct {
		name    string
		edit    func(c *config.Config)
		env     map[string]string
		ports   node.PortProber
		is      error
		message string
	}{
		{"no model", func(c *config.Config) { c.Model = "" }, nil, nil, config.ErrInvalid, "--model is required"},
		{"missing model path", func(c *config.Config) { c.Model = "/no/such/model" }, nil, nil, ErrBadInput, `model directory "/no/such/model" does not exist`},
		{"vllm not found", func(c *config.Config) { c.VLLMBin = "no-such-vllm" }, nil, nil, ErrBadInput, `vllm executable "no-such-vllm" not found: install vLLM`},
		{"ray not found", func(c *config.Config) { c.RayBin = "no-such-ray" },
			map[string]string{"SLURM_JOB_ID": "5", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_NODEID": "0"}, nil, ErrBadInput, `ray executable "no-such-ray" not found`},
		{"state dir not writable", func(c *config.Config) { c.StateDir = notDir + "/sub" }, nil, nil, ErrBadInput, "cannot be created"},
		{"state dir writable by the group", func(c *config.Config) { c.StateDir = groupWritable }, nil, nil, ErrBadInput, "other users could write to it: chmod go-w"},
		{"state dir is a link", func(c *config.Config) { c.StateDir = linked }, nil, nil, ErrBadInput, "is a symbolic link"},
		{"state dir's logs is a planted link", func(c *config.Config) { c.StateDir = plantedLogs }, nil, nil, ErrBadInput, "logs is a symbolic link"},
		{"invalid slurm variables", func(*config.Config) {}, map[string]string{"SLURM_JOB_ID": "5", "SLURM_JOB_NODELIST": "n[3-1]"}, nil, slurm.ErrAllocation, `"3-1" runs backwards`},
		{"impossible parallelism", func(c *config.Config) { c.TensorParallel = 4 },
			map[string]string{"SLURM_JOB_ID": "5", "SLURM_JOB_NODELIST": "n1", "SLURM_GPUS_ON_NODE": "2"}, nil, config.ErrInvalid, "tensor parallel 4 exceeds the 2 GPUs"},
		{"secret on vllm command line", func(c *config.Config) { c.VLLMArgs = []string{"--api-key=abc"} }, nil, nil, config.ErrInvalid, "visible to every user"},
		{"port cannot be bound", func(c *config.Config) { c.Port = 80 }, nil, deniedProber{80}, node.ErrPort, "port 80 cannot be bound"},
		{"unknown interface", func(c *config.Config) { c.Iface = "ib0" }, nil, nil, node.ErrAddress, `interface "ib0" not found`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t, t.TempDir())
			tt.edit(&cfg)
			env := tt.env
			if env == nil {
				env = map[string]string{}
			}
			deps := testDeps(t, env, "n1")
			if tt.ports != nil {
				deps.Ports = tt.ports
			}
			err := Run(context.Background(), cfg, deps)
			require.Error(t, err)
			assert.ErrorIs(t, err, tt.is)
			assert.Contains(t, err.Error(), tt.message)
			assertNoChildren(t)
		})
	}
	if os.Geteuid() == 0 {
		t.Run("state dir of another user", func(t *testing.T) {
			dir := t.TempDir()
			require.NoError(t, os.Chown(dir, 65534, 65534))
			cfg := testConfig(t, dir)
			err := Run(context.Background(), cfg, testDeps(t, map[string]string{}, "n1"))
			assert.ErrorIs(t, err, ErrBadInput)
			assert.ErrorContains(t, err, "belongs to uid 65534")
		})
	}
	if os.Geteuid() != 0 {
		t.Run("unwritable state dir", func(t *testing.T) {
			cfg := testConfig(t, unwritable)
			err := Run(context.Background(), cfg, testDeps(t, map[string]string{}, "n1"))
			assert.ErrorIs(t, err, ErrBadInput)
		})
	}
}

// deniedProber refuses one port as a non-root user would be refused a privileged one.
type deniedProber struct{ port int }

func (d deniedProber) Probe(port int) error {
	if port == d.port {
		return syscall.EACCES
	}
	return node.TCPProber{}.Probe(port)
}

func (deniedProber) Free() (int, error) { return node.TCPProber{}.Free() }

// TestRunMultiNodeEngineOnTheHeadOnly: when the plan keeps the model on the head, vLLM runs
// there with its own processes, not Ray's executor, and a worker's Ray going away does not
// restart it.
func TestRunMultiNodeEngineOnTheHeadOnly(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("FAKE_RAY_DIR", t.TempDir())
	argsFile := filepath.Join(t.TempDir(), "args")
	t.Setenv("FAKE_VLLM_ARGS", argsFile)
	cfg := testConfig(t, dir)
	cfg.TensorParallel, cfg.PipelineParallel = 1, 1
	runs := startNodes(t, cfg, "4343", 2, nil)
	c := waitConnState(t, dir, jobfiles.StateReady, 30*time.Second)
	args, err := os.ReadFile(argsFile)
	require.NoError(t, err)
	assert.NotContains(t, string(args), "--distributed-executor-backend")
	workerRay := fakeRayPIDs(t, false)
	require.Len(t, workerRay, 1)
	require.NoError(t, syscall.Kill(workerRay[0], syscall.SIGKILL))
	require.Eventually(t, func() bool { return len(fakeRayPIDs(t, false)) == 1 && fakeRayPIDs(t, false)[0] != workerRay[0] },
		20*time.Second, 20*time.Millisecond, "the worker restarts its Ray")
	assert.Never(t, func() bool {
		c, _ = jobfiles.ReadConnection(filepath.Join(dir, jobfiles.ConnectionFile))
		return c.State != jobfiles.StateReady || c.Restarts["vllm"] != 0
	}, time.Second, 20*time.Millisecond, "the engine keeps running through ten Ray polls")
	for _, err := range stopNodes(t, runs) {
		require.NoError(t, err)
	}
	assertNoChildren(t)
}

// TestRunMultiNodeWithoutRay runs a head and a worker with --launcher mp: no Ray, rank 0 on the
// head behind the gateway, rank 1 headless on the worker. A rank that ends restarts the whole
// group, and so does the head's rank.
func TestRunMultiNodeWithoutRay(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("FAKE_RAY_DIR", t.TempDir())
	argsFile := filepath.Join(t.TempDir(), "args")
	t.Setenv("FAKE_VLLM_ARGS", argsFile)
	cfg := testConfig(t, dir)
	cfg.Launcher = config.LauncherMP
	cfg.TensorParallel, cfg.PipelineParallel = 1, 2
	runs := startNodes(t, cfg, "4444", 2, nil)
	c := waitConnState(t, dir, jobfiles.StateReady, 30*time.Second)
	assert.Equal(t, config.LauncherMP, c.Launcher)
	assert.Empty(t, c.RayAddress, "no Ray")
	assert.Empty(t, fakeRayPIDs(t, true))
	assert.Empty(t, fakeRayPIDs(t, false))
	rv, err := jobfiles.ReadRendezvous(dir)
	require.NoError(t, err)
	require.NotZero(t, rv.Ports.EngineMaster)
	master := fmt.Sprintf("--master-addr\n127.0.0.1\n--master-port\n%d", rv.Ports.EngineMaster)
	head, err := os.ReadFile(argsFile)
	require.NoError(t, err)
	assert.Contains(t, string(head), "--distributed-executor-backend\nmp\n--nnodes\n2\n--node-rank\n0\n"+master)
	rank1 := func() (string, int) {
		var args []byte
		var pid int
		require.Eventually(t, func() bool {
			args, _ = os.ReadFile(argsFile + ".rank1")
			b, _ := os.ReadFile(argsFile + ".rank1.pid")
			pid, _ = strconv.Atoi(string(b))
			return pid > 0 && syscall.Kill(pid, 0) == nil
		}, 20*time.Second, 20*time.Millisecond, "the worker runs rank 1")
		return string(args), pid
	}
	args, pid := rank1()
	assert.Contains(t, args, "--node-rank\n1\n"+master+"\n--headless")
	assert.NotContains(t, args, "--uds", "a headless rank serves no API")
	gen, _ := jobfiles.ReadEngineGeneration(dir)
	assert.Equal(t, 1, gen)

	// The worker's rank ends: the head restarts the group, generation 2.
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	c = waitConnState(t, dir, jobfiles.StateRestarting, 10*time.Second)
	assert.Contains(t, c.Reason, "node2's rank of the engine ended: exit status 137")
	c = waitConnState(t, dir, jobfiles.StateReady, 30*time.Second)
	assert.Equal(t, 1, c.Restarts["vllm"])
	require.Eventually(t, func() bool { g, _ := jobfiles.ReadEngineGeneration(dir); return g == 2 }, 10*time.Second, 20*time.Millisecond)
	_, pid2 := rank1()
	require.Eventually(t, func() bool { _, pid2 = rank1(); return pid2 != pid }, 20*time.Second, 20*time.Millisecond, "rank 1 of generation 2")

	// The head's rank ends: it restarts as generation 3, and the worker's rank follows.
	b, err := os.ReadFile(argsFile + ".pid")
	require.NoError(t, err)
	headPID, _ := strconv.Atoi(string(b))
	require.NoError(t, syscall.Kill(headPID, syscall.SIGKILL))
	waitConnState(t, dir, jobfiles.StateRestarting, 10*time.Second)
	c = waitConnState(t, dir, jobfiles.StateReady, 30*time.Second)
	assert.Equal(t, 2, c.Restarts["vllm"], "the group's restarts count on the head")
	require.Eventually(t, func() bool { g, _ := jobfiles.ReadEngineGeneration(dir); return g == 3 }, 10*time.Second, 20*time.Millisecond)
	require.Eventually(t, func() bool { _, p := rank1(); return p != pid2 }, 20*time.Second, 20*time.Millisecond, "rank 1 of generation 3")

	for _, err := range stopNodes(t, runs) {
		require.NoError(t, err)
	}
	waitConnState(t, dir, jobfiles.StateStopped, time.Second)
	assertNoChildren(t)
}

// TestRunWithoutRayStopReachesRankFirst: Slurm signals the ranks as well as the agents, and
// rank 0 may end of it before any agent has taken the stop in. That end is part of the stop:
// no restart is counted.
func TestRunWithoutRayStopReachesRankFirst(t *testing.T) {
	dir := t.TempDir()
	argsFile := filepath.Join(t.TempDir(), "args")
	t.Setenv("FAKE_VLLM_ARGS", argsFile)
	cfg := testConfig(t, dir)
	cfg.Launcher = config.LauncherMP
	cfg.TensorParallel, cfg.PipelineParallel = 1, 2
	runs := startNodes(t, cfg, "4646", 2, nil)
	waitConnState(t, dir, jobfiles.StateReady, 30*time.Second)
	b, err := os.ReadFile(argsFile + ".pid")
	require.NoError(t, err)
	pid, err := strconv.Atoi(string(b))
	require.NoError(t, err)

	require.NoError(t, syscall.Kill(pid, syscall.SIGTERM))
	require.Eventually(t, func() bool { return syscall.Kill(pid, 0) != nil }, 10*time.Second, 5*time.Millisecond,
		"rank 0 ended and was reaped")
	for _, err := range stopNodes(t, runs) {
		require.NoError(t, err)
	}
	c := waitConnState(t, dir, jobfiles.StateStopped, time.Second)
	assert.Equal(t, 0, c.Restarts["vllm"], "rank 0 ending of the stop is not a restart")
	assertNoChildren(t)
}

// TestRunWithoutRayRankCannotStart: a worker's rank that fails at every start restarts the
// group until the head's policy gives up, and the worker's words reach the connection file.
func TestRunWithoutRayRankCannotStart(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("FAKE_VLLM_RANK_FAIL", "1")
	cfg := testConfig(t, dir)
	cfg.Launcher = config.LauncherMP
	cfg.TensorParallel, cfg.PipelineParallel = 1, 2
	cfg.MaxRestarts = 2
	runs := startNodes(t, cfg, "4545", 2, nil)
	c := waitConnState(t, dir, jobfiles.StateFailed, 30*time.Second)
	assert.Contains(t, c.Reason, "gave up after 2 restarts")
	assert.Contains(t, c.Reason, "node2's rank of the engine ended: exit status 1; the engine said: RuntimeError: injected rank failure")
	stopNodes(t, runs)
	assertNoChildren(t)
}
