//go:build e2e

package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// nodeFile reads a file as node sees it (its own mount namespace).
func nodeFile(t *testing.T, node int, path string) ([]byte, error) {
	t.Helper()
	return onNode(node, "", "cat "+path).Output()
}

// TestFullStateDirectory (issue 31, item 3): the job's state directory is a 3 MiB tmpfs on its
// node, and it fills up while the job serves. The connection file keeps its last whole version,
// /healthz, llm-agent status and the metrics say what cannot be written, the audit log counts
// its failed writes and keeps the records in memory, and the engine keeps serving (its output
// copied on, not blocked). When space returns, the connection file says the state as it is and
// the audit log holds every request, each line whole.
func TestFullStateDirectory(t *testing.T) {
	dir := filepath.Join(suite.work, fmt.Sprintf("full-%d", rand.IntN(1e9)))
	require.NoError(t, os.MkdirAll(dir, 0o700))
	out, err := onNode(1, "", "mount -t tmpfs -o size=3m,mode=0700 llm-full "+dir).CombinedOutput()
	require.NoError(t, err, "%s", out)
	t.Cleanup(func() { onNode(1, "", "umount "+dir).Run() })
	j := submit(t, jobSpec{script: "singlenode.sbatch", sbatch: []string{"-w", "node1", "--gpus-per-node=1", "--cpus-per-task=1"},
		agent: []string{"--state-dir", dir}})
	conn := func() (jobfiles.Connection, error) {
		var c jobfiles.Connection
		b, err := nodeFile(t, 1, filepath.Join(dir, jobfiles.ConnectionFile))
		if err == nil {
			err = json.Unmarshal(b, &c)
		}
		return c, err
	}
	var c jobfiles.Connection
	require.True(t, assertEventually(readyTimeout, func() bool { c, err = conn(); return err == nil && c.State == jobfiles.StateReady }), "never ready")
	keyb, err := nodeFile(t, 1, filepath.Join(dir, "api_key"))
	require.NoError(t, err)
	key := strings.TrimSpace(string(keyb))
	sent := 0
	send := func(n int) {
		for range n {
			resp, _ := chat(t, c.BaseURL, key, c.ServedModelName, false)
			require.NotNil(t, resp)
			sent++
		}
	}
	send(3)

	// The disk fills.
	onNode(1, "", "dd if=/dev/zero of="+dir+"/filler bs=64k 2>/dev/null").Run()
	filled := time.Now()
	require.NoError(t, os.WriteFile(j.control, []byte("crash"), 0o644)) // the engine restarts: the state changes twice
	send(20)
	metricsURL := c.Metrics[0].MetricsURL
	var detected time.Duration
	require.True(t, assertEventually(30*time.Second, func() bool {
		m := metricsText(t, metricsURL)
		ok, _ := metricValue(m, `llm_agent_state_write_ok{file="connection.json"`)
		errs, _ := metricValue(m, `llm_agent_gateway_audit_write_errors_total{`)
		if ok == "0" && errs != "" && errs != "0" {
			detected = time.Since(filled)
			return true
		}
		return false
	}), "the metrics never said the state directory cannot be written")
	whole, err := conn()
	require.NoError(t, err, "the connection file stays whole JSON")
	health := metricsText(t, strings.TrimSuffix(metricsURL, "/metrics")+"/healthz")
	assert.Contains(t, health, "warning: cannot write connection.json in the state directory")
	status, _ := onNode(1, "", suite.agentBin+" status "+dir).CombinedOutput()
	assert.Contains(t, string(status), "warning: cannot write connection.json", "%s", status)
	m := metricsText(t, metricsURL)
	pending, _ := metricValue(m, `llm_agent_gateway_audit_pending_bytes{`)
	t.Logf("FULLDISK: detected %s after the disk filled; the connection file stayed whole (%s); %s bytes of audit records wait",
		detected.Round(100*time.Millisecond), whole.State, pending)

	// Space returns.
	require.NoError(t, onNode(1, "", "rm "+dir+"/filler").Run())
	freed := time.Now()
	require.True(t, assertEventually(30*time.Second, func() bool {
		m := metricsText(t, metricsURL)
		ok, _ := metricValue(m, `llm_agent_state_write_ok{file="connection.json"`)
		pending, _ := metricValue(m, `llm_agent_gateway_audit_pending_bytes{`)
		now, err := conn()
		return ok == "1" && pending == "0" && err == nil && now.State == jobfiles.StateReady && now.Restarts["vllm"] == 1
	}), "never recovered")
	recovered := time.Since(freed)
	b, err := nodeFile(t, 1, filepath.Join(dir, "audit.jsonl"))
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	for _, l := range lines {
		var r map[string]any
		require.NoError(t, json.Unmarshal([]byte(l), &r), "every audit line whole: %q", l)
	}
	assert.Equal(t, sent, len(lines), "every request is in the audit log")
	dropped, _ := metricValue(metricsText(t, metricsURL), `llm_agent_gateway_audit_dropped_total{`)
	assert.Equal(t, "0", dropped)
	t.Logf("FULLDISK: recovered %s after space returned; %d requests, %d audit lines, 0 dropped", recovered.Round(100*time.Millisecond), sent, len(lines))

	require.NoError(t, exec.Command("scancel", j.id).Run())
	requireNoProcesses(t, drainBound)
}

// descendants are pid and every process below it.
func descendants(pid int) []int {
	children := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: the comm may hold spaces, so read after its ')'.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) > 1 {
			ppid, _ := strconv.Atoi(f[1])
			children[ppid] = append(children[ppid], p)
		}
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// TestEngineOutOfMemory (issue 31, item 2): the job's processes are in a memory cgroup of
// 400 MiB; the engine takes host memory until the kernel's OOM killer ends it. The reason says
// so, the restart policy applies (the engine comes back), and nothing is left afterwards.
func TestEngineOutOfMemory(t *testing.T) {
	self, err := os.ReadFile("/proc/self/cgroup")
	require.NoError(t, err)
	var parent string
	for _, line := range strings.Split(string(self), "\n") {
		if parts := strings.SplitN(line, ":", 3); len(parts) == 3 && strings.Contains(","+parts[1]+",", ",memory,") {
			parent = filepath.Join("/sys/fs/cgroup/memory", parts[2])
		}
	}
	require.NotEmpty(t, parent, "the suite needs a cgroup v1 memory controller, as the mini-cluster's host has")
	cg := filepath.Join(parent, fmt.Sprintf("llm-oom-%d", rand.IntN(1e9)))
	require.NoError(t, os.Mkdir(cg, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(cg, "memory.limit_in_bytes"), []byte("419430400"), 0o644))

	j := submit(t, jobSpec{script: "singlenode.sbatch", sbatch: []string{"-w", "node1", "--gpus-per-node=1", "--cpus-per-task=1"},
		agent: []string{"--max-restarts", "5"}})
	c := j.waitState(jobfiles.StateReady, readyTimeout)
	var info jobfiles.NodeInfo
	require.NoError(t, jobfiles.ReadJSON(filepath.Join(j.stateDir, "nodes", "node1.json"), &info))
	// Every process of the agent into the limited cgroup; the engine started after it is born
	// there, and the agent reads that cgroup's count.
	for _, pid := range descendants(info.PID) {
		os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644)
	}
	t.Cleanup(func() {
		exec.Command("scancel", j.id).Run()
		assertEventually(drainBound, func() bool { return os.Remove(cg) == nil })
	})
	require.NoError(t, os.WriteFile(j.control, []byte("crash"), 0o644)) // a new engine, born in the cgroup
	j.waitState(jobfiles.StateRestarting, 30*time.Second)
	j.waitState(jobfiles.StateReady, readyTimeout)

	grew := time.Now()
	require.NoError(t, os.WriteFile(j.control, []byte("grow"), 0o644))
	var reason string
	require.True(t, assertEventually(time.Minute, func() bool {
		cur, ok := j.conn()
		reason = cur.Reason
		return ok && strings.Contains(cur.Reason, "killed by the out-of-memory killer")
	}), "the reason never said the OOM killer; last: %q", reason)
	detected := time.Since(grew)
	b, err := os.ReadFile(filepath.Join(cg, "memory.oom_control"))
	require.NoError(t, err)
	assert.Contains(t, string(b), "oom_kill 1", "the kernel's own count")
	c = j.waitState(jobfiles.StateReady, readyTimeout)
	assert.Equal(t, 2, c.Restarts["vllm"], "the restart policy applies: the engine is back")
	t.Logf("OOM: the kernel killed the engine; the reason said so %s after it began to grow: %q", detected.Round(100*time.Millisecond), reason)

	require.NoError(t, exec.Command("scancel", j.id).Run())
	requireNoProcesses(t, drainBound)
}

// rssKiB is a process's resident memory.
func rssKiB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.Fields(v)[0])
			return n
		}
	}
	return 0
}

// TestManyLongStreams (issue 31, item 5): 64 streams of 500-token answers at once through the
// gateway, from an engine that takes 20 ms a token: every stream ends whole (its 500 tokens, its
// usage, [DONE]), and the agent's resident memory stays bounded.
func TestManyLongStreams(t *testing.T) {
	const streams, tokens = 64, 500
	j := submit(t, jobSpec{script: "singlenode.sbatch", sbatch: []string{"-w", "node1", "--gpus-per-node=1", "--cpus-per-task=1"},
		env: []string{"FAKEVLLM_TOKEN_DELAY=20ms"}})
	c := j.waitState(jobfiles.StateReady, readyTimeout)
	key := j.apiKey(c)
	var info jobfiles.NodeInfo
	require.NoError(t, jobfiles.ReadJSON(filepath.Join(j.stateDir, "nodes", "node1.json"), &info))
	base := rssKiB(info.PID)
	require.Positive(t, base)
	peak := base
	done := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			peak = max(peak, rssKiB(info.PID))
			select {
			case <-done:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	type result struct {
		content, usage int
		done           bool
		err            string
	}
	results := make(chan result, streams)
	start := time.Now()
	for range streams {
		go func() {
			var r result
			defer func() { results <- r }()
			body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"tell a long story"}],"max_tokens":%d,"stream":true,"stream_options":{"include_usage":true}}`,
				c.ServedModelName, tokens)
			req, _ := http.NewRequest(http.MethodPost, c.BaseURL+"/chat/completions", strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+key)
			req.Header.Set("Content-Type", "application/json")
			resp, err := (&http.Client{Timeout: 2 * time.Minute}).Do(req)
			if err != nil {
				r.err = err.Error()
				return
			}
			defer resp.Body.Close()
			sc := bufio.NewScanner(resp.Body) // not readSSE: its require may not run off the test's goroutine
			for sc.Scan() {
				data, ok := strings.CutPrefix(sc.Text(), "data: ")
				if !ok {
					continue
				}
				if data == "[DONE]" {
					r.done = true
					continue
				}
				var chunk struct {
					Choices []struct {
						Delta struct{ Content string } `json:"delta"`
					} `json:"choices"`
					Usage *struct {
						CompletionTokens int `json:"completion_tokens"`
					} `json:"usage"`
				}
				if json.Unmarshal([]byte(data), &chunk) == nil {
					if len(chunk.Choices) > 0 && chunk.Choices[0].Delta.Content != "" {
						r.content++
					}
					if chunk.Usage != nil {
						r.usage = chunk.Usage.CompletionTokens
					}
				}
			}
			if err := sc.Err(); err != nil {
				r.err = err.Error()
			}
		}()
	}
	whole := 0
	for range streams {
		r := <-results
		if r.err == "" && r.done && r.usage == tokens && r.content >= tokens-1 {
			whole++
		} else {
			t.Errorf("a stream did not end whole: %+v", r)
		}
	}
	took := time.Since(start)
	close(done)
	<-sampled
	assert.Equal(t, streams, whole)
	grew := float64(peak-base) / 1024
	t.Logf("STREAMS: %d streams of %d tokens at 20 ms a token, all whole in %s; the agent's RSS %.1f MiB before, %.1f MiB at its peak (+%.1f MiB, %.2fx)",
		streams, tokens, took.Round(100*time.Millisecond), float64(base)/1024, float64(peak)/1024, grew, float64(peak)/float64(base))
	assert.Less(t, grew, 64.0, "the agent's memory stays bounded: well under 1 MiB a stream")
	require.NoError(t, exec.Command("scancel", j.id).Run())
	requireNoProcesses(t, drainBound)
}
