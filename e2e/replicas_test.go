//go:build e2e

package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// sent is one request of the load and what came of it.
type sent struct {
	start, end time.Time
	status     int
	replica    string
	ok         bool
}

// replicaStates returns each replica's state from the connection file.
func replicaStates(j *job) map[string]string {
	c, _ := j.conn()
	out := map[string]string{}
	for _, r := range c.Replicas {
		out[r.Node] = r.State
	}
	return out
}

// TestReplicas: three replicas on three nodes serve behind the head's gateway; one's engine is
// killed under load: it leaves the rotation within 5 s, no request fails but those it had in
// flight, and it comes back. Another's hangs: it leaves within 5 s too, and its requests are
// delayed, not failed.
func TestReplicas(t *testing.T) {
	j := submit(t, jobSpec{script: "multinode.sbatch", sbatch: []string{"-N", "3", "--gpus-per-node=1", "--cpus-per-task=1"},
		agent: []string{"--replicas", "3"},
		// An engine restart as slow as a small model's load: the head sees the replica gone.
		env: []string{"LLM_AGENT_BACKOFF_INITIAL=3s", "FAKEVLLM_STARTUP_DELAY=2s"}})
	c := j.waitState(jobfiles.StateReady, readyTimeout)
	key := j.apiKey(c)
	all := map[string]string{"node1": "ready", "node2": "ready", "node3": "ready"}
	require.True(t, assertEventually(readyTimeout, func() bool { return fmt.Sprint(replicaStates(j)) == fmt.Sprint(all) }),
		"every replica ready: %v", replicaStates(j))
	assert.Empty(t, pidsByComm(t, 1, "raylet"), "replicas run without Ray")

	var mu sync.Mutex
	var log []sent
	stop := make(chan struct{})
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 30 * time.Second}
	const clients = 6
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				s := sent{start: time.Now()}
				body := fmt.Sprintf(`{"model":%q,"prompt":"replica load %d","max_tokens":16}`, c.ServedModelName, i)
				req, _ := http.NewRequest(http.MethodPost, c.BaseURL+"/completions", strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+key)
				req.Header.Set("Content-Type", "application/json")
				if resp, err := client.Do(req); err == nil {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					s.status, s.replica = resp.StatusCode, resp.Header.Get("X-Llm-Agent-Replica")
					s.ok = resp.StatusCode == http.StatusOK && strings.Contains(string(b), `"text"`)
				}
				s.end = time.Now()
				mu.Lock()
				log = append(log, s)
				mu.Unlock()
			}
		}()
	}
	served := func(since time.Time) map[string]int {
		mu.Lock()
		defer mu.Unlock()
		n := map[string]int{}
		for _, s := range log {
			if s.ok && s.start.After(since) {
				n[s.replica]++
			}
		}
		return n
	}
	start := time.Now()
	require.True(t, assertEventually(30*time.Second, func() bool { n := served(start); return n["node1"] > 5 && n["node2"] > 5 && n["node3"] > 5 }),
		"every replica serves: %v", served(start))

	pids := pidsByComm(t, 2, "fakevllm")
	require.Len(t, pids, 1)
	killed := time.Now()
	require.NoError(t, exec.Command("kill", "-KILL", pids[0]).Run())
	require.True(t, assertEventually(10*time.Second, func() bool { return replicaStates(j)["node2"] == "not ready" }))
	left := time.Since(killed)
	assert.Less(t, left, 5*time.Second, "the replica leaves the rotation within 5 s")
	require.True(t, assertEventually(readyTimeout, func() bool { return replicaStates(j)["node2"] == "ready" }), "node2's agent restarts its engine")
	back := time.Now()
	require.True(t, assertEventually(30*time.Second, func() bool { return served(back)["node2"] > 5 }), "node2 serves again: %v", served(back))
	require.True(t, assertEventually(10*time.Second, func() bool {
		c, _ := j.conn()
		for _, r := range c.Replicas {
			if r.Node == "node2" {
				return r.Restarts == 1
			}
		}
		return false
	}), "the connection file counts node2's restart")

	// node3's engine hangs (stopped, its socket still open): it leaves the rotation within 5 s,
	// the others serve meanwhile, and it comes back once it answers again.
	pids = pidsByComm(t, 3, "fakevllm")
	require.Len(t, pids, 1)
	hung := time.Now()
	require.NoError(t, exec.Command("kill", "-STOP", pids[0]).Run())
	require.True(t, assertEventually(10*time.Second, func() bool { return replicaStates(j)["node3"] == "not ready" }))
	hangLeft := time.Since(hung)
	out := time.Now()
	assert.Less(t, hangLeft, 5*time.Second, "a hung replica leaves the rotation within 5 s")
	require.True(t, assertEventually(30*time.Second, func() bool { n := served(out); return n["node1"] > 5 && n["node2"] > 5 }),
		"the others serve while node3 hangs: %v", served(out))
	resumed := time.Now()
	require.NoError(t, exec.Command("kill", "-CONT", pids[0]).Run())
	require.True(t, assertEventually(15*time.Second, func() bool { return replicaStates(j)["node3"] == "ready" }), "node3 back once it answers")
	require.True(t, assertEventually(30*time.Second, func() bool { return served(resumed)["node3"] > 5 }), "node3 serves again: %v", served(resumed))
	close(stop)
	wg.Wait()
	for _, s := range log {
		assert.False(t, s.ok && s.replica == "node3" && s.start.After(out) && s.start.Before(resumed),
			"a request sent while node3 was out of the rotation went to it: %+v", s)
	}

	var failed []sent
	for _, s := range log {
		if !s.ok {
			failed = append(failed, s)
		}
	}
	for _, f := range failed {
		assert.True(t, f.start.Before(killed) && f.end.After(killed), "a request failed (HTTP %d) that was not in flight when node2's engine died: %+v", f.status, f)
	}
	assert.LessOrEqual(t, len(failed), clients)
	text := metricsText(t, c.Metrics[0].MetricsURL)
	for _, node := range []string{"node1", "node2", "node3"} {
		v, ok := metricValue(text, `llm_agent_gateway_replica_up{job="`+j.id+`",model="`+c.ServedModelName+`",node="node1",replica="`+node+`"}`)
		assert.True(t, ok && v == "1", "%s up in the metrics: %q", node, v)
	}
	t.Logf("BENCH replicas: %d requests under load, %d failed (in flight on the killed replica); node2 left the rotation %.1f s after its engine died, served again %.1f s after; node3 left %.1f s after its engine hung",
		len(log), len(failed), left.Seconds(), back.Sub(killed).Seconds(), hangLeft.Seconds())

	require.NoError(t, exec.Command("scancel", j.id).Run())
	j.waitState(jobfiles.StateStopped, drainBound)
	requireNoProcesses(t, drainBound)
}

// TestReplicaThroughputScales measures with llm-agent bench what 1, 2 and 3 replicas of the
// stand-in engine serve, each of a fixed capacity (4 sequences at once, 10 ms a token): R
// replicas must give at least 0.9 × R times the throughput of one.
func TestReplicaThroughputScales(t *testing.T) {
	outDir := os.Getenv("LLM_AGENT_BENCH_OUT")
	rates := map[int]float64{}
	for _, r := range []int{1, 2, 3} {
		script, sbatch := "multinode.sbatch", []string{"-N", strconv.Itoa(r), "--gpus-per-node=1", "--cpus-per-task=1"}
		if r == 1 {
			script, sbatch = "singlenode.sbatch", []string{"--gpus-per-node=1", "--cpus-per-task=1"}
		}
		j := submit(t, jobSpec{script: script, sbatch: sbatch, env: []string{"FAKEVLLM_TOKEN_DELAY=10ms"},
			agent: []string{"--replicas", strconv.Itoa(r), "--vllm-arg=--max-num-seqs", "--vllm-arg=4"}})
		c := j.waitState(jobfiles.StateReady, readyTimeout)
		if r > 1 {
			require.True(t, assertEventually(readyTimeout, func() bool {
				n := 0
				for _, s := range replicaStates(j) {
					if s == "ready" {
						n++
					}
				}
				return n == r
			}), "every replica ready: %v", replicaStates(j))
		}
		c, _ = j.conn() // every replica's node listed
		headScrape(t, c, r, outDir)
		args := []string{"bench", "--url", c.BaseURL, "--api-key-file", c.APIKeyFile, "--model", c.ServedModelName, "--input-len", "16",
			"--output-len", "16", "--ignore-eos", "--num-prompts", "300", "--max-concurrency", "12", "--no-progress"}
		if outDir != "" {
			args = append(args, "--json", filepath.Join(outDir, fmt.Sprintf("replicas-%d.json", r)))
		}
		out, err := exec.Command(suite.agentBin, args...).CombinedOutput()
		require.NoError(t, err, "llm-agent bench: %s", out)
		if outDir != "" {
			require.NoError(t, os.WriteFile(filepath.Join(outDir, fmt.Sprintf("replicas-%d.txt", r)), out, 0o644))
		}
		m := regexp.MustCompile(`Request throughput \(req/s\):\s+([0-9.]+)`).FindSubmatch(out)
		require.NotNil(t, m, "%s", out)
		rates[r], _ = strconv.ParseFloat(string(m[1]), 64)
		t.Logf("BENCH replicas %d: %.2f req/s (%.2fx one)", r, rates[r], rates[r]/rates[1])
		require.NoError(t, exec.Command("scancel", j.id).Run())
		j.waitState(jobfiles.StateStopped, drainBound)
		requireNoProcesses(t, drainBound)
		j.waitEnded(drainBound)
	}
	for _, r := range []int{2, 3} {
		assert.GreaterOrEqual(t, rates[r], 0.9*float64(r)*rates[1], "%d replicas serve at least 0.9 x %d times what one does", r, r)
	}
}

// TestReplicasPerNode runs four replicas on two nodes of two GPUs: two per node, each engine on
// its own GPU behind its own gateway; the head routes to all four.
func TestReplicasPerNode(t *testing.T) {
	j := submit(t, jobSpec{script: "multinode.sbatch", sbatch: []string{"-N", "2", "--gpus-per-node=2", "--cpus-per-task=1"},
		agent: []string{"--replicas", "4"}})
	c := j.waitState(jobfiles.StateReady, readyTimeout)
	all := map[string]string{"node1/0": "ready", "node1/1": "ready", "node2/0": "ready", "node2/1": "ready"}
	require.True(t, assertEventually(readyTimeout, func() bool { return fmt.Sprint(replicaStates(j)) == fmt.Sprint(all) }),
		"every replica ready: %v", replicaStates(j))
	for node := 1; node <= 2; node++ {
		var gpus []string
		for _, pid := range pidsByComm(t, node, "fakevllm") {
			env, err := os.ReadFile("/proc/" + pid + "/environ")
			require.NoError(t, err)
			for _, kv := range strings.Split(string(env), "\x00") {
				if v, ok := strings.CutPrefix(kv, "CUDA_VISIBLE_DEVICES="); ok {
					gpus = append(gpus, v)
				}
			}
		}
		assert.ElementsMatch(t, []string{"0", "1"}, gpus, "node%d: one GPU per engine", node)
	}
	key := j.apiKey(c)
	served := map[string]int{}
	for range 40 {
		resp, body := chat(t, c.BaseURL, key, c.ServedModelName, false)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
		served[resp.Header.Get("X-Llm-Agent-Replica")]++
	}
	assert.Len(t, served, 4, "every replica serves: %v", served)
	out, err := exec.Command(suite.agentBin, "status", j.stateDir).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "replica node2/1")
	// Each engine's series on its own target: four engines, each fetched once by its own path.
	raw, err := os.ReadFile(filepath.Join(j.stateDir, jobfiles.TargetsFile))
	require.NoError(t, err)
	var groups []jobfiles.TargetGroup
	decodeJSON(t, raw, &groups)
	engines := map[string]float64{}
	for _, g := range groups {
		if g.Labels["role"] == "engine" {
			text := metricsText(t, "http://"+g.Targets[0]+g.Labels["__metrics_path__"])
			engines[g.Labels["replica"]] = metricFloat(t, text, "fakevllm_metrics_fetches_total")
		}
	}
	assert.Equal(t, map[string]float64{"node1/0": 1, "node1/1": 1, "node2/0": 1, "node2/1": 1}, engines)
	require.NoError(t, exec.Command("scancel", j.id).Run())
	j.waitState(jobfiles.StateStopped, drainBound)
	requireNoProcesses(t, drainBound)
}

// headScrape measures the head's /metrics with r replicas: each node exports its own engine's
// series (its /metrics/engine, a target of its own), and the head's scrape fetches no engine,
// so it must not grow with r. The stand-in engines count their /metrics fetches.
func headScrape(t *testing.T, c jobfiles.Connection, r int, outDir string) {
	t.Helper()
	var head string
	var engines []string
	for _, ep := range c.Metrics {
		if ep.Role == "head" {
			head = ep.MetricsURL
		}
		if ep.EngineMetricsURL != "" {
			engines = append(engines, ep.EngineMetricsURL)
		}
	}
	require.NotEmpty(t, head)
	require.Len(t, engines, r, "each replica's node exports its engine's series: %+v", c.Metrics)
	fetches := func() []float64 {
		var out []float64
		for _, u := range engines {
			out = append(out, metricFloat(t, metricsText(t, u), "fakevllm_metrics_fetches_total"))
		}
		return out
	}
	timed := func(url string, n int) (p50, p99 time.Duration, size int) {
		d := make([]time.Duration, n)
		for i := range d {
			start := time.Now()
			size = len(metricsText(t, url))
			d[i] = time.Since(start)
		}
		sort.Slice(d, func(a, b int) bool { return d[a] < d[b] })
		return d[n/2], d[n*99/100], size
	}
	before := fetches()
	const scrapes = 200
	p50, p99, size := timed(head, scrapes)
	after := fetches()
	for i := range engines {
		// The second reading counts itself: one more, and none from the head's scrapes.
		assert.Equal(t, before[i]+1, after[i], "%s: the head's %d scrapes fetched no engine's metrics", engines[i], scrapes)
	}
	e50, e99, esize := timed(engines[0], 50)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	line := fmt.Sprintf("head scrape, replicas R = %d: %d scrapes, p50 %.2f ms, p99 %.2f ms, %d bytes, %d engine fetches; one node's engine series: p50 %.2f ms, p99 %.2f ms, %d bytes, %d targets",
		r, scrapes, ms(p50), ms(p99), size, int(after[0]-before[0]-1), ms(e50), ms(e99), esize, len(engines))
	t.Logf("BENCH %s", line)
	if outDir != "" {
		f, err := os.OpenFile(filepath.Join(outDir, "head-scrape.txt"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		require.NoError(t, err)
		defer f.Close()
		_, err = fmt.Fprintln(f, line)
		require.NoError(t, err)
	}
}
