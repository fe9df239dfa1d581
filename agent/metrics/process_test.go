package metrics

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/supervisor"
)

// fakeTable plays the process table: what each root has below it, changed by the test.
type fakeTable map[int]supervisor.ProcessUsage

func (f fakeTable) usage(_ context.Context, roots []int) map[int]supervisor.ProcessUsage {
	out := map[int]supervisor.ProcessUsage{}
	for _, r := range roots {
		out[r] = f[r]
	}
	return out
}

func fixedNode(context.Context) (NodeMemory, error) {
	return NodeMemory{Total: 64 << 30, Available: 40 << 30, Limit: 48 << 30, SwapUsed: 1 << 20, SwapIn: 4096, SwapOut: 8192}, nil
}

func TestProcessCollector(t *testing.T) {
	s := NewState("node1", "42", "head", 1, 1, t0, t0)
	s.SetChild("vllm", "running", t0)
	s.SetPID("vllm", 100)
	s.SetChild("ray", "backoff", t0) // not running: zero use
	a, b := supervisor.ProcessKey{PID: 101, Created: 1}, supervisor.ProcessKey{PID: 102, Created: 2}
	table := fakeTable{100: {Processes: 2, RSS: 3 << 30, Threads: 40, FDs: 70,
		CPU: map[supervisor.ProcessKey]float64{a: 10, b: 5}}}
	c := NewProcessCollector(s, table.usage, fixedNode)

	want := `
# HELP llm_agent_child_cpu_seconds_total User and system CPU seconds of the child and every process below it, ended ones included.
# TYPE llm_agent_child_cpu_seconds_total counter
llm_agent_child_cpu_seconds_total{child="ray",job="42",node="node1"} 0
llm_agent_child_cpu_seconds_total{child="vllm",job="42",node="node1"} 15
# HELP llm_agent_child_resident_memory_bytes Resident memory of the child and every process below it; pages that forked processes share count once per process.
# TYPE llm_agent_child_resident_memory_bytes gauge
llm_agent_child_resident_memory_bytes{child="ray",job="42",node="node1"} 0
llm_agent_child_resident_memory_bytes{child="vllm",job="42",node="node1"} 3.221225472e+09
# HELP llm_agent_memory_limit_bytes Memory the job's processes on this node may use: the job's cgroup limit or the node's memory, whichever is smaller.
# TYPE llm_agent_memory_limit_bytes gauge
llm_agent_memory_limit_bytes{job="42",node="node1"} 5.1539607552e+10
# HELP llm_agent_node_swap_out_bytes_total Bytes the node swapped out since boot; a rising rate means the node is swapping.
# TYPE llm_agent_node_swap_out_bytes_total counter
llm_agent_node_swap_out_bytes_total{job="42",node="node1"} 8192
`
	require.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(want), "llm_agent_child_cpu_seconds_total",
		"llm_agent_child_resident_memory_bytes", "llm_agent_memory_limit_bytes", "llm_agent_node_swap_out_bytes_total"))
	assert.Equal(t, 16, testutil.CollectAndCount(c), "5 families for each of 2 children, 6 for the node")

	// A process that ends keeps its CPU seconds in the counter; a new one adds its own.
	cNew := supervisor.ProcessKey{PID: 103, Created: 3}
	table[100] = supervisor.ProcessUsage{Processes: 2, CPU: map[supervisor.ProcessKey]float64{a: 12, cNew: 1}}
	assert.Equal(t, 18.0, cpuOf(t, c, "vllm"), "10→12, 5 retired, 1 new")
	// The child restarts under a new pid; its counter goes on from where it was.
	s.SetPID("vllm", 200)
	table[200] = supervisor.ProcessUsage{Processes: 1, CPU: map[supervisor.ProcessKey]float64{{PID: 201, Created: 9}: 0.5}}
	assert.Equal(t, 18.5, cpuOf(t, c, "vllm"))
	// A reading that goes back (tick rounding) never takes the counter down.
	table[200] = supervisor.ProcessUsage{Processes: 1, CPU: map[supervisor.ProcessKey]float64{{PID: 201, Created: 9}: 0.4}}
	assert.Equal(t, 18.5, cpuOf(t, c, "vllm"))
}

func TestProcessCollectorWithoutNodeMemory(t *testing.T) {
	s := NewState("node1", "42", "worker", 1, 1, t0, t0)
	c := NewProcessCollector(s, fakeTable{}.usage, func(context.Context) (NodeMemory, error) {
		return NodeMemory{}, errors.New("no /proc/meminfo")
	})
	assert.Zero(t, testutil.CollectAndCount(c), "no children, no node reading: nothing rather than zeros")
}

// TestReadNodeMemoryReadsThisMachine reads the real node: numbers a machine can have.
func TestReadNodeMemoryReadsThisMachine(t *testing.T) {
	n, err := (&nodeReader{}).read(context.Background())
	require.NoError(t, err)
	assert.Greater(t, n.Total, uint64(64<<20))
	assert.LessOrEqual(t, n.Available, n.Total)
	assert.Greater(t, n.Limit, uint64(0))
	assert.LessOrEqual(t, n.Limit, n.Total)
}

// TestProcessCollectorReadsARealChild reads, through the real process table, a child that
// holds a known amount of memory: this test binary started again as a helper, below a parent
// that plays the reaper (a shell).
func TestProcessCollectorReadsARealChild(t *testing.T) {
	const mib = 1 << 20
	ready := filepath.Join(t.TempDir(), "ready")
	cmd := exec.Command("/bin/sh", "-c", `"$0" & wait`, os.Args[0])
	cmd.Env = append(os.Environ(), allocEnv+"="+ready)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(t, cmd.Start())
	defer func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); _ = cmd.Wait() }()
	require.Eventually(t, func() bool { _, err := os.Stat(ready); return err == nil }, 20*time.Second, 10*time.Millisecond)

	s := NewState("node1", "42", "head", 1, 1, t0, t0)
	s.SetChild("vllm", "running", t0)
	s.SetPID("vllm", cmd.Process.Pid)
	c := NewProcessCollector(s, nil, nil)
	rss := gather(t, c, "llm_agent_child_resident_memory_bytes")
	assert.GreaterOrEqual(t, rss, float64(helperMiB*mib), "the helper's touched memory")
	assert.Less(t, rss, float64((helperMiB+256)*mib), "one Go test binary on top (larger with -race)")
	assert.Equal(t, 1.0, gather(t, c, "llm_agent_child_processes"), "the helper; the shell is the root")
	assert.Greater(t, gather(t, c, "llm_agent_node_memory_total_bytes"), 0.0)
}

// The helper: with allocEnv set, this test binary holds helperMiB of touched memory, says so
// by creating the file the variable names, and waits to be killed.
const (
	allocEnv  = "METRICS_TEST_ALLOC"
	helperMiB = 64
)

var held []byte

func TestMain(m *testing.M) {
	if ready, ok := os.LookupEnv(allocEnv); ok {
		held = make([]byte, helperMiB<<20)
		for i := 0; i < len(held); i += 4096 {
			held[i] = 1
		}
		if err := os.WriteFile(ready, nil, 0o600); err != nil {
			os.Exit(3)
		}
		select {}
	}
	os.Exit(m.Run())
}

// families scrapes c once.
func families(t *testing.T, c prometheus.Collector) []*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(c))
	mfs, err := reg.Gather()
	require.NoError(t, err)
	return mfs
}

// gather returns the one value of family from c.
func gather(t *testing.T, c prometheus.Collector, family string) float64 {
	t.Helper()
	for _, mf := range families(t, c) {
		if mf.GetName() == family {
			require.Len(t, mf.GetMetric(), 1)
			m := mf.GetMetric()[0]
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no %s", family)
	return 0
}

// cpuOf is the CPU counter of one child, read through a scrape.
func cpuOf(t *testing.T, c *ProcessCollector, child string) float64 {
	t.Helper()
	for _, mf := range families(t, c) {
		if mf.GetName() != "llm_agent_child_cpu_seconds_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "child" && l.GetValue() == child {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no CPU counter of %s", child)
	return 0
}
