package webui

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// node is a stand-in for a node's agent: its probes and its metrics, from the GPU collector's
// own golden files.
func node(t *testing.T, golden string, ready bool) *httptest.Server {
	t.Helper()
	metrics, err := os.ReadFile(filepath.Join("..", "..", "gpu", "testdata", golden))
	require.NoError(t, err)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/metrics":
			w.Write(metrics)
		case "/readyz":
			if !ready {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestSourceReadsTheJob(t *testing.T) {
	head, worker := node(t, "by_index.prom", true), node(t, "no_driver.prom", true)
	path := filepath.Join(t.TempDir(), jobfiles.ConnectionFile)
	end := time.Now().Add(time.Hour)
	conn := jobfiles.Connection{JobID: "42", State: jobfiles.StateReady, ServedModelName: "<b>m</b>", JobEndTime: &end,
		StartedAt: time.Now().Add(-time.Minute), Restarts: map[string]int{"vllm": 1},
		Adapters: []jobfiles.Adapter{{Name: "sql", Path: "/secret/path"}},
		Metrics: []jobfiles.NodeEndpoint{{Node: "node1", Role: "head", MetricsURL: head.URL + "/metrics"},
			{Node: "node2", Role: "worker", MetricsURL: worker.URL + "/metrics"}}}
	require.NoError(t, jobfiles.WriteJSONAtomic(path, conn, 0o600))
	src := &Source{ConnectionFile: path, Client: http.DefaultClient, Idle: func() time.Duration { return 5 * time.Second },
		IdleRelease: time.Minute, Handover: 10 * time.Minute, Service: "chat", MaxAge: time.Hour}
	req := httptest.NewRequest("GET", "/ui/api/status", nil)
	st, err := src.Read(req)
	require.NoError(t, err)
	assert.Equal(t, "42", st.JobID)
	assert.True(t, st.Ready)
	assert.Equal(t, []Model{{Name: "<b>m</b>", Kind: "model", State: "Live"}, {Name: "sql", Kind: "adapter", State: "Live"}}, st.Models)
	require.Len(t, st.Nodes, 2)
	assert.Equal(t, []GPU{{Index: "6", Name: "NVIDIA H100 80GB HBM3", Utilization: 0.6, MemoryUsedMiB: 7168, MemoryTotalMiB: 81920},
		{Index: "7", Name: "NVIDIA H100 80GB HBM3", Utilization: 0.7, MemoryUsedMiB: 8192, MemoryTotalMiB: 81920}}, st.Nodes[0].GPUs)
	assert.Empty(t, st.Nodes[0].GPUNote)
	assert.Empty(t, st.Nodes[1].GPUs)
	assert.Contains(t, st.Nodes[1].GPUNote, "NVML found none")
	require.NotNil(t, st.IdleLeft)
	assert.InDelta(t, 55, *st.IdleLeft, 1)
	require.NotNil(t, st.HandoverIn)
	assert.InDelta(t, 50*60, *st.HandoverIn, 5)
	assert.Equal(t, 1, st.Restarts["vllm"])

	// Kept for MaxAge: a second page's poll probes nothing.
	conn.State = jobfiles.StateRestarting
	require.NoError(t, jobfiles.WriteJSONAtomic(path, conn, 0o600))
	again, err := src.Read(req)
	require.NoError(t, err)
	assert.Equal(t, "Live", again.Models[0].State)
	src.MaxAge = 0
	again, err = src.Read(req)
	require.NoError(t, err)
	assert.Equal(t, "Restarting", again.Models[0].State)
	assert.False(t, again.Ready)

	head.Close()
	again, err = src.Read(req)
	require.NoError(t, err)
	assert.Equal(t, "its metrics gave no answer", again.Nodes[0].GPUNote)
	require.NoError(t, os.Remove(path))
	_, err = src.Read(req)
	assert.Error(t, err)
}

func TestModelStates(t *testing.T) {
	for state, want := range map[jobfiles.ServiceState]string{jobfiles.StateStarting: "Starting", jobfiles.StateRestarting: "Restarting",
		jobfiles.StateStopping: "Stopping", jobfiles.StateFailed: "Failed", jobfiles.StateStopped: "Stopped"} {
		path := filepath.Join(t.TempDir(), jobfiles.ConnectionFile)
		require.NoError(t, jobfiles.WriteJSONAtomic(path, jobfiles.Connection{JobID: "1", State: state,
			Models: []jobfiles.ModelPlacement{{Name: "a", Nodes: []string{"node1", "node2"}}}}, 0o600))
		st, err := (&Source{ConnectionFile: path, Client: http.DefaultClient}).Read(httptest.NewRequest("GET", "/", nil))
		require.NoError(t, err)
		assert.Equal(t, []Model{{Name: "a", Kind: "model", State: want, Where: "node1, node2"}}, st.Models, state)
	}
}

func TestServiceJobs(t *testing.T) {
	dir := t.TempDir()
	f := jobfiles.ServiceFile{Connection: jobfiles.Connection{JobID: "10", State: jobfiles.StateReady},
		Service: jobfiles.ServiceInfo{Name: "chat", Current: "10",
			Extras: []jobfiles.ExtraJob{{JobID: "11", State: jobfiles.ExtraPending, Reason: "Resources"},
				{JobID: "12", State: jobfiles.ExtraReady}, {JobID: "13", State: jobfiles.ExtraDraining, Reason: "load fell"}},
			Successor: &jobfiles.Successor{JobID: "14", State: "pending", Reason: "Dependency"}}}
	require.NoError(t, jobfiles.WriteJSONAtomic(filepath.Join(dir, jobfiles.ConnectionFile), f, 0o600))
	path := filepath.Join(t.TempDir(), jobfiles.ConnectionFile)
	require.NoError(t, jobfiles.WriteJSONAtomic(path, f.Connection, 0o600))
	st, err := (&Source{ConnectionFile: path, Client: http.DefaultClient, Service: "chat", ServiceDir: dir}).Read(httptest.NewRequest("GET", "/", nil))
	require.NoError(t, err)
	assert.Equal(t, []ServiceJob{{JobID: "11", Role: "added under load", State: "Queued", Reason: "Resources"},
		{JobID: "12", Role: "added under load", State: "Live"},
		{JobID: "13", Role: "added under load", State: "Draining", Reason: "load fell"},
		{JobID: "14", Role: "successor", State: "Queued", Reason: "Dependency"}}, st.Jobs)
	f.Service.Successor.State = "cancelled"
	assert.Len(t, serviceJobs(f.Service), 3, "a cancelled successor is not shown")
}
