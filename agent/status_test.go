package agent

import (
	"bytes"
	"context"
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

	"github.com/llm-agent/llm-agent/jobfiles"
)

func nodeServer(t *testing.T, ready bool) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/healthz":
			w.Write([]byte("ok\n"))
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
			{Node: "n1", Role: "head", MetricsURL: nodeServer(t, true) + "/metrics"},
			{Node: "n2", Role: "worker", MetricsURL: nodeServer(t, false) + "/metrics"},
			{Node: "n3", Role: "worker", MetricsURL: "http://127.0.0.1:1/metrics"},
		}}
	w, err := jobfiles.NewConnectionWriter(dir, conn, "sk-x")
	require.NoError(t, err)

	path, err := ConnectionPath(dir, "")
	require.NoError(t, err)
	r, err := Status(context.Background(), path, &http.Client{}, now)
	require.NoError(t, err)
	assert.True(t, r.Ready)
	assert.Equal(t, 3600.0, r.Uptime)
	require.NotNil(t, r.TimeLeft)
	assert.Equal(t, 5400.0, *r.TimeLeft)
	require.Len(t, r.Nodes, 3)
	assert.True(t, r.Nodes[0].Ready)
	assert.True(t, r.Nodes[1].Healthy)
	assert.False(t, r.Nodes[1].Ready)
	assert.Equal(t, "not ready", r.Nodes[1].Detail)
	assert.False(t, r.Nodes[2].Healthy)

	var out bytes.Buffer
	require.NoError(t, r.WriteTable(&out))
	for _, want := range []string{"job 55", "state ready", "ready yes", "url http://10.0.0.1:8000/v1",
		"model llama (tensor 4 x pipeline 2)", "gpus 8", "uptime 1h0m0s", "time left 1h30m0s",
		"restarts ray 0, vllm 1", "node n1 head, ready", "node n2 worker, up, not ready",
		"node n3 worker, unreachable:", "tunnel ssh -N -L 8000:n1:8000 u@login",
		"replica n1 ready, 4 GPUs", "replica n2 not ready, 4 GPUs", "adapter sql /a/sql"} {
		assert.Contains(t, spaces.ReplaceAllString(out.String(), " "), want)
	}

	// A job that ended is reported from its file alone, not ready.
	require.NoError(t, w.SetState(jobfiles.StateFailed, "engine: gave up"))
	later := now.Add(5 * time.Hour)
	r, err = Status(context.Background(), path, &http.Client{}, later)
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
	_, err = Status(context.Background(), bad, &http.Client{}, time.Now())
	assert.ErrorIs(t, err, ErrNoJob)
}
