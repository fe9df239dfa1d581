package metrics

import (
	"context"
	"maps"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shirou/gopsutil/v4/docker"
	"github.com/shirou/gopsutil/v4/mem"

	"github.com/llm-agent/llm-agent/supervisor"
)

// NodeMemory is the node's memory as the process collector reports it.
type NodeMemory struct {
	// Total and Available are the node's memory and what new allocations can get without
	// swapping (the kernel's MemAvailable).
	Total, Available uint64
	// Limit is what this job's processes on the node may use: the job's cgroup limit (Slurm's
	// ConstrainRAMSpace) when there is one and it is smaller, else Total.
	Limit uint64
	// SwapUsed is swap in use; SwapIn and SwapOut count bytes swapped since boot.
	SwapUsed, SwapIn, SwapOut uint64
}

// nodeReader reads the node's memory on every call, and the cgroup's limit, which is set when
// the job starts and hardly changes, at most every treeRescan: reading it costs as much as
// everything else in a scrape of the agent's own series.
type nodeReader struct {
	mu     sync.Mutex
	limit  uint64
	readAt time.Time
}

func (r *nodeReader) read(ctx context.Context) (NodeMemory, error) {
	vm, err := mem.VirtualMemoryWithContext(ctx)
	if err != nil {
		return NodeMemory{}, err
	}
	n := NodeMemory{Total: vm.Total, Available: vm.Available, Limit: min(vm.Total, r.cgroupLimit(ctx))}
	if sw, err := mem.SwapMemoryWithContext(ctx); err == nil {
		n.SwapUsed, n.SwapIn, n.SwapOut = sw.Used, sw.Sin, sw.Sout
	}
	return n, nil
}

// cgroupLimit is the agent's cgroup memory limit; no cgroup (or no memory controller) and
// "max" read as the largest integer, which the caller's min keeps out.
func (r *nodeReader) cgroupLimit(ctx context.Context) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.readAt.IsZero() || time.Since(r.readAt) >= treeRescan {
		r.limit, r.readAt = math.MaxUint64, time.Now()
		if cg, err := docker.CgroupMemOwnWithContext(ctx); err == nil && cg.MemLimitInBytes > 0 {
			r.limit = cg.MemLimitInBytes
		}
	}
	return r.limit
}

// ProcessCollector exports what each supervised child uses, the command with every process
// below it, and the node's memory, read at scrape time. A process that joins a child's tree
// is counted within treeRescan.
type ProcessCollector struct {
	state *State
	usage func(context.Context, []int) map[int]supervisor.ProcessUsage
	node  func(context.Context) (NodeMemory, error)

	// cpu keeps each child's CPU seconds a counter: a process that ended keeps its last
	// reading in retired, so the sum over the tree never goes back.
	mu  sync.Mutex
	cpu map[string]*cpuCounter

	rss, cpuSeconds, threads, fds, procs                        *prometheus.Desc
	memTotal, memAvailable, memLimit, swapUsed, swapIn, swapOut *prometheus.Desc
}

var _ prometheus.Collector = (*ProcessCollector)(nil)

// treeRescan is how long the collector keeps each child's tree members before it reads the
// whole process table again: reading it costs a few milliseconds on a node with hundreds of
// kernel threads, and a scrape comes every 15 s or so.
const treeRescan = 60 * time.Second

// NewProcessCollector returns a collector of the children in state; usage and node read the
// process tables and the node's memory (nil: supervisor.Trees with treeRescan, and the node's
// memory and the agent's cgroup limit through gopsutil).
func NewProcessCollector(state *State, usage func(context.Context, []int) map[int]supervisor.ProcessUsage,
	node func(context.Context) (NodeMemory, error)) *ProcessCollector {
	if usage == nil {
		usage = (&supervisor.Trees{Rescan: treeRescan}).Usage
	}
	if node == nil {
		node = (&nodeReader{}).read
	}
	n, j, _ := state.Labels()
	c := prometheus.Labels{"node": n, "job": j}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("llm_agent_"+name, help, labels, c)
	}
	return &ProcessCollector{
		state: state, usage: usage, node: node, cpu: map[string]*cpuCounter{},
		rss: d("child_resident_memory_bytes", "Resident memory of the child and every process below it; "+
			"pages that forked processes share count once per process.", "child"),
		cpuSeconds:   d("child_cpu_seconds_total", "User and system CPU seconds of the child and every process below it, ended ones included.", "child"),
		threads:      d("child_threads", "Threads of the child and every process below it.", "child"),
		fds:          d("child_open_fds", "Open file descriptors of the child and every process below it.", "child"),
		procs:        d("child_processes", "Live processes of the child: the command and every process below it.", "child"),
		memTotal:     d("node_memory_total_bytes", "The node's memory."),
		memAvailable: d("node_memory_available_bytes", "Memory new allocations can get on the node without swapping (MemAvailable)."),
		memLimit: d("memory_limit_bytes", "Memory the job's processes on this node may use: the job's cgroup limit "+
			"or the node's memory, whichever is smaller."),
		swapUsed: d("node_swap_used_bytes", "Swap in use on the node."),
		swapIn:   d("node_swap_in_bytes_total", "Bytes the node swapped in since boot."),
		swapOut:  d("node_swap_out_bytes_total", "Bytes the node swapped out since boot; a rising rate means the node is swapping."),
	}
}

// Describe sends the static descriptions.
func (c *ProcessCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.rss, c.cpuSeconds, c.threads, c.fds, c.procs,
		c.memTotal, c.memAvailable, c.memLimit, c.swapUsed, c.swapIn, c.swapOut} {
		ch <- d
	}
}

// processScrapeTimeout bounds one reading of the process table.
const processScrapeTimeout = 5 * time.Second

// Collect reads the process table once and sends every child's and the node's metrics. A
// child that is not running reports zero use; its CPU counter keeps its value.
func (c *ProcessCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), processScrapeTimeout)
	defer cancel()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	children := c.state.Snapshot().Children
	var roots []int
	for _, child := range children {
		if child.PID > 0 {
			roots = append(roots, child.PID)
		}
	}
	usage := c.usage(ctx, roots)
	c.mu.Lock()
	for _, name := range slices.Sorted(maps.Keys(children)) {
		u := usage[children[name].PID] // the zero usage when not running
		gauge(c.rss, float64(u.RSS), name)
		gauge(c.threads, float64(u.Threads), name)
		gauge(c.fds, float64(u.FDs), name)
		gauge(c.procs, float64(u.Processes), name)
		ch <- prometheus.MustNewConstMetric(c.cpuSeconds, prometheus.CounterValue, c.cpuOf(name).update(u.CPU), name)
	}
	c.mu.Unlock()
	n, err := c.node(ctx)
	if err != nil {
		return
	}
	gauge(c.memTotal, float64(n.Total))
	gauge(c.memAvailable, float64(n.Available))
	gauge(c.memLimit, float64(n.Limit))
	gauge(c.swapUsed, float64(n.SwapUsed))
	ch <- prometheus.MustNewConstMetric(c.swapIn, prometheus.CounterValue, float64(n.SwapIn))
	ch <- prometheus.MustNewConstMetric(c.swapOut, prometheus.CounterValue, float64(n.SwapOut))
}

func (c *ProcessCollector) cpuOf(name string) *cpuCounter {
	cc, ok := c.cpu[name]
	if !ok {
		cc = &cpuCounter{}
		c.cpu[name] = cc
	}
	return cc
}

// cpuCounter sums CPU seconds over processes that come and go.
type cpuCounter struct {
	retired float64
	live    map[supervisor.ProcessKey]float64
}

// update takes a new reading of the live processes and returns the total: processes no longer
// live are retired with their last reading.
func (c *cpuCounter) update(now map[supervisor.ProcessKey]float64) float64 {
	next := make(map[supervisor.ProcessKey]float64, len(now))
	total := 0.0
	for k, v := range now {
		// A process's reading never goes back; should one (the kernel's tick rounding), the
		// higher one stays.
		if prev, ok := c.live[k]; ok && prev > v {
			v = prev
		}
		next[k] = v
		total += v
	}
	for k, v := range c.live {
		if _, ok := next[k]; !ok {
			c.retired += v
		}
	}
	c.live = next
	return c.retired + total
}
