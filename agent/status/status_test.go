package status

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/agent/gateway"
	"github.com/llm-agent/llm-agent/jobfiles"
)

func nodeServer(t *testing.T, ready bool, warning ...string) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/healthz":
			w.Write([]byte("ok\n"))
			for _, line := range warning {
				w.Write([]byte("warning: " + line + "\n"))
			}
		case "/readyz":
			if !ready {
				w.WriteHeader(http.StatusServiceUnavailable)
				w.Write([]byte("not ready\n"))
				return
			}
			w.Write([]byte("ready\n"))
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// spaces collapses the table's padding, which depends on its widest first column.
var spaces = regexp.MustCompile(" +")

func TestStatus(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	end := now.Add(90 * time.Minute)
	dir := t.TempDir()
	conn := jobfiles.Connection{JobID: "55", State: jobfiles.StateReady, BaseURL: "http://10.0.0.1:8000/v1", ServedModelName: "llama",
		TensorParallel: 4, PipelineParallel: 2, GPUs: 8, StartedAt: now.Add(-time.Hour), JobEndTime: &end,
		Restarts: map[string]int{"vllm": 1, "ray": 0}, SSHTunnel: "ssh -N -L 8000:n1:8000 u@login",
		Replicas: []jobfiles.Replica{{Node: "n1", GPUs: 4, State: "ready"}, {Node: "n2", GPUs: 4, State: "not ready"}},
		Adapters: []jobfiles.Adapter{{Name: "sql", Path: "/a/sql"}},
		Metrics: []jobfiles.NodeEndpoint{
			{Node: "n1", Role: "head", MetricsURL: nodeServer(t, true, "cannot write connection.json in the state directory") + "/metrics"},
			{Node: "n2", Role: "worker", MetricsURL: nodeServer(t, false) + "/metrics"},
			{Node: "n3", Role: "worker", MetricsURL: "http://127.0.0.1:1/metrics"},
		}}
	w, err := jobfiles.NewConnectionWriter(dir, conn, "sk-x")
	require.NoError(t, err)

	path, err := ConnectionPath(dir, "")
	require.NoError(t, err)
	r, err := Read(context.Background(), path, &http.Client{}, now)
	require.NoError(t, err)
	assert.True(t, r.Ready)
	assert.Equal(t, 3600.0, r.Uptime)
	require.NotNil(t, r.TimeLeft)
	assert.Equal(t, 5400.0, *r.TimeLeft)
	require.Len(t, r.Nodes, 3)
	assert.True(t, r.Nodes[0].Ready)
	assert.Equal(t, "cannot write connection.json in the state directory", r.Nodes[0].Warning, "a full disk, as the node's /healthz says it")
	assert.Empty(t, r.Nodes[1].Warning)
	assert.True(t, r.Nodes[1].Healthy)
	assert.False(t, r.Nodes[1].Ready)
	assert.Equal(t, "not ready", r.Nodes[1].Detail)
	assert.False(t, r.Nodes[2].Healthy)

	var out bytes.Buffer
	require.NoError(t, r.WriteTable(&out))
	for _, want := range []string{"job 55", "state ready", "ready yes", "url http://10.0.0.1:8000/v1",
		"model llama (tensor 4 x pipeline 2)", "gpus 8", "uptime 1h0m0s", "time left 1h30m0s",
		"restarts ray 0, vllm 1", "node n1 head, ready; warning: cannot write connection.json in the state directory", "node n2 worker, up, not ready",
		"node n3 worker, unreachable:", "tunnel ssh -N -L 8000:n1:8000 u@login",
		"replica n1 ready, 4 GPUs", "replica n2 not ready, 4 GPUs", "adapter sql /a/sql"} {
		assert.Contains(t, spaces.ReplaceAllString(out.String(), " "), want)
	}

	// A job that ended is reported from its file alone, not ready.
	require.NoError(t, w.SetState(jobfiles.StateFailed, "engine: gave up"))
	later := now.Add(5 * time.Hour)
	r, err = Read(context.Background(), path, &http.Client{}, later)
	require.NoError(t, err)
	assert.False(t, r.Ready)
	snap := w.Snapshot()
	assert.InDelta(t, snap.UpdatedAt.Sub(snap.StartedAt).Seconds(), r.Uptime, 0.001, "uptime ends when the job did")
	assert.Nil(t, r.TimeLeft, "an ended job has no time left")
	out.Reset()
	require.NoError(t, r.WriteTable(&out))
	assert.Contains(t, out.String(), "failed (engine: gave up)")
	assert.Contains(t, out.String(), "not probed")
	assert.Contains(t, spaces.ReplaceAllString(out.String(), " "), "time left none (ended)")
}

func TestConnectionPath(t *testing.T) {
	home := t.TempDir()
	jobDir := filepath.Join(home, ".llm-agent", "jobs", "77")
	require.NoError(t, os.MkdirAll(jobDir, 0o700))
	file := filepath.Join(jobDir, jobfiles.ConnectionFile)
	require.NoError(t, os.WriteFile(file, []byte("{}"), 0o600))
	for _, arg := range []string{"77", jobDir, file} {
		got, err := ConnectionPath(arg, home)
		require.NoError(t, err, arg)
		assert.Equal(t, file, got)
	}
	_, err := ConnectionPath("78", home)
	assert.ErrorIs(t, err, ErrNoJob)
	assert.True(t, strings.Contains(err.Error(), "78"))
	_, err = ConnectionPath("", home)
	assert.ErrorIs(t, err, ErrNoJob)
	bad := filepath.Join(t.TempDir(), "c.json")
	require.NoError(t, os.WriteFile(bad, []byte("{"), 0o600))
	_, err = Read(context.Background(), bad, &http.Client{}, time.Now())
	assert.ErrorIs(t, err, ErrNoJob)
}

// writeJob writes a job's connection file and, with records, its audit log, in a new folder.
func writeJob(t *testing.T, id string, started time.Time, state jobfiles.ServiceState, records ...gateway.Record) string {
	t.Helper()
	dir := t.TempDir()
	conn := jobfiles.Connection{JobID: id, State: state, GPUs: 2, StartedAt: started, UpdatedAt: started.Add(time.Hour)}
	require.NoError(t, jobfiles.WriteJSONAtomic(filepath.Join(dir, jobfiles.ConnectionFile), conn, 0o600))
	if len(records) > 0 {
		var b bytes.Buffer
		for _, r := range records {
			line, err := json.Marshal(r)
			require.NoError(t, err)
			b.Write(append(line, '\n'))
		}
		require.NoError(t, os.WriteFile(filepath.Join(dir, gateway.AuditFile), b.Bytes(), 0o600))
	}
	return dir
}

// TestServiceStatusAndUsage: a service's status names its jobs and successor, and its usage
// sums that of every job that served; a job that never served adds nothing.
func TestServiceStatusAndUsage(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	rec := func(key string, tokens int) gateway.Record {
		return gateway.Record{Time: now, Key: key, Project: "p", Endpoint: "/v1/chat/completions", Status: 200, PromptTokens: tokens, CompletionTokens: tokens}
	}
	first := writeJob(t, "10", now.Add(-3*time.Hour), jobfiles.StateStopped, rec("alice", 10), rec("bob", 30))
	second := writeJob(t, "11", now.Add(-time.Hour), jobfiles.StateReady, rec("alice", 5))
	never := writeJob(t, "12", now, jobfiles.StateStarting)
	ended := now.Add(-2 * time.Hour)
	svc := filepath.Join(t.TempDir(), "svc")
	_, err := jobfiles.UpdateService(svc, func(s *jobfiles.ServiceFile) error {
		s.Connection = jobfiles.Connection{JobID: "11", State: jobfiles.StateReady, StartedAt: now.Add(-time.Hour), GPUs: 2}
		s.Service = jobfiles.ServiceInfo{Name: "svc", State: jobfiles.ServiceServing, Reason: "job 11 serves", Current: "11",
			Successor: &jobfiles.Successor{JobID: "12", State: "pending", Reason: "Dependency", Attempts: 1, Of: "11"},
			Jobs: []jobfiles.ServiceJob{{JobID: "10", Node: "n1", StateDir: first, Started: now.Add(-3 * time.Hour), Ended: &ended, Why: "handed over"},
				{JobID: "11", Node: "n2", StateDir: second, Started: now.Add(-time.Hour)}, {JobID: "12", Node: "n3", StateDir: never, Started: now}}}
		return nil
	})
	require.NoError(t, err)
	path := filepath.Join(svc, jobfiles.ConnectionFile)

	rep, err := ServiceUsage(path, 100, now)
	require.NoError(t, err)
	byKey := map[string]gateway.UsageRow{}
	for _, k := range rep.Keys {
		byKey[k.Key] = k
	}
	require.Len(t, byKey, 2, "%+v", rep.Keys)
	assert.EqualValues(t, 2, byKey["alice"].Requests, "alice's requests in both jobs")
	assert.EqualValues(t, 1, byKey["bob"].Requests)

	one, err := Usage(filepath.Join(first, jobfiles.ConnectionFile), 100, now)
	require.NoError(t, err)
	assert.Len(t, one.Keys, 2)
	_, err = Usage(filepath.Join(t.TempDir(), jobfiles.ConnectionFile), 100, now)
	assert.ErrorIs(t, err, ErrNoJob)
	_, err = ServiceUsage(filepath.Join(t.TempDir(), jobfiles.ConnectionFile), 100, now)
	assert.ErrorIs(t, err, ErrNoJob)

	r, err := Read(context.Background(), path, &http.Client{}, now)
	require.NoError(t, err)
	require.NotNil(t, r.Service)
	var out bytes.Buffer
	require.NoError(t, r.WriteTable(&out))
	table := spaces.ReplaceAllString(out.String(), " ")
	assert.Contains(t, table, "service svc serving: job 11 serves\n")
	assert.Contains(t, table, "successor job 12 pending Dependency (attempt 1)\n")
	assert.Contains(t, table, "job 10 n1, from "+now.Add(-3*time.Hour).Local().Format("2006-01-02 15:04:05")+" to "+ended.Local().Format("2006-01-02 15:04:05")+" handed over\n")
	assert.Contains(t, table, "job 11 n2, from "+now.Add(-time.Hour).Local().Format("2006-01-02 15:04:05")+" to serving\n")
}

func TestLiveUsage(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	rec := gateway.Record{Time: now, Key: "alice", Project: "p", Endpoint: "/v1/chat/completions", Status: 200, PromptTokens: 3, CompletionTokens: 4}
	for _, state := range []jobfiles.ServiceState{jobfiles.StateReady, jobfiles.StateStopped} {
		dir := writeJob(t, "20", now.Add(-time.Hour), state, rec, rec)
		conn := filepath.Join(dir, jobfiles.ConnectionFile)
		live := NewLiveUsage(conn, 100)
		got, err := live.Report(now)
		require.NoError(t, err)
		want, err := Usage(conn, 100, now)
		require.NoError(t, err)
		assert.Equal(t, want, got, "as Usage reads it, %s", state)
		assert.EqualValues(t, 2, got.Keys[0].Requests)
	}
	_, err := NewLiveUsage(filepath.Join(t.TempDir(), jobfiles.ConnectionFile), 100).Report(now)
	assert.ErrorIs(t, err, ErrNoJob)
}
