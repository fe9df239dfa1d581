package jobfiles

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/clock"
)

// TestConnectionFileNeverHalfWritten has a reader parse the file in a loop while the writer
// rewrites it thousands of times with contents of changing length.
func TestConnectionFileNeverHalfWritten(t *testing.T) {
	dir := t.TempDir()
	w, err := NewConnectionWriter(dir, Connection{JobID: "1", State: StateStarting, BaseURL: "http://h:1/v1"}, "sk-secret")
	require.NoError(t, err)
	path := filepath.Join(dir, ConnectionFile)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var reads, bad int
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			b, err := os.ReadFile(path)
			require.NoError(t, err, "the file never disappears")
			var c Connection
			if json.Unmarshal(b, &c) != nil {
				bad++
			}
			reads++
			fi, err := os.Stat(path)
			require.NoError(t, err)
			assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
		}
	}()
	for i := 0; i < 2000; i++ {
		reason := ""
		for j := 0; j < i%50; j++ {
			reason += "x"
		}
		require.NoError(t, w.SetState([]ServiceState{StateReady, StateRestarting}[i%2], reason))
	}
	close(stop)
	wg.Wait()
	assert.Zero(t, bad, "half-written reads out of %d", reads)
	assert.Greater(t, reads, 10)
	leftovers, _ := filepath.Glob(filepath.Join(dir, ".*tmp*"))
	assert.Empty(t, leftovers, "no temp files left")
}

func TestConnectionWriter(t *testing.T) {
	dir := t.TempDir()
	w, err := NewConnectionWriter(dir, Connection{JobID: "5", State: StateStarting, BaseURL: "http://h:1/v1"}, "sk-it's")
	require.NoError(t, err)
	env, err := os.ReadFile(filepath.Join(dir, ConnectionEnvFile))
	require.NoError(t, err)
	assert.Contains(t, string(env), `export OPENAI_API_KEY='sk-it'\''s'`, "shell-quoted")
	key, err := os.ReadFile(filepath.Join(dir, APIKeyFile))
	require.NoError(t, err)
	assert.Equal(t, "sk-it's\n", string(key))

	before, _ := os.Stat(filepath.Join(dir, ConnectionFile))
	require.NoError(t, w.Update(func(c *Connection) {}))
	after, _ := os.Stat(filepath.Join(dir, ConnectionFile))
	assert.Equal(t, before.ModTime(), after.ModTime(), "no change, no write")

	require.NoError(t, w.SetState(StateReady, ""))
	first := w.Snapshot().ReadyAt
	require.NotNil(t, first)
	require.NoError(t, w.SetState(StateRestarting, "engine exited"))
	require.NoError(t, w.SetState(StateReady, ""))
	assert.Equal(t, first, w.Snapshot().ReadyAt, "ready_at is the first time")
	c, err := ReadConnection(filepath.Join(dir, ConnectionFile))
	require.NoError(t, err)
	assert.Equal(t, StateReady, c.State)

	_, err = ReadConnection(filepath.Join(dir, "nope.json"))
	assert.Error(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "bad.json"), []byte("{"), 0o600))
	_, err = ReadConnection(filepath.Join(dir, "bad.json"))
	assert.ErrorContains(t, err, "parse")
}

func TestSSHTunnelCommand(t *testing.T) {
	assert.Equal(t, "ssh -N -L 8000:gpu01:8000 ana@login.hpc", SSHTunnelCommand(8000, "gpu01", "ana", "login.hpc"))
	assert.Equal(t, "ssh -N -L 8001:gpu01:8001 USER@LOGIN-HOST", SSHTunnelCommand(8001, "gpu01", "", ""))
}

func TestWriteFileAtomicErrors(t *testing.T) {
	err := WriteFileAtomic(filepath.Join(t.TempDir(), "missing", "f"), []byte("x"), 0o600)
	assert.Error(t, err)
}

func TestRendezvous(t *testing.T) {
	dir := t.TempDir()
	want := Rendezvous{JobID: "3", StepID: "0", LaunchID: "10.0.0.1:4000", HeadHost: "n1"}
	ctx := context.Background()

	// Each wait runs on fake time, moved on whenever the waiter sets a timer.
	fake := func(t *testing.T) *clock.Fake {
		clk := clock.NewFake()
		t.Cleanup(clk.AdvanceOnWait(10 * time.Millisecond))
		return clk
	}
	t.Run("times out naming the head", func(t *testing.T) {
		_, err := WaitRendezvous(ctx, fake(t), dir, want, 100*time.Millisecond, 10*time.Millisecond)
		assert.ErrorIs(t, err, ErrRendezvousTimeout)
		assert.Contains(t, err.Error(), "no rendezvous from head n1")
	})
	t.Run("ignores a stale file", func(t *testing.T) {
		stale := want
		stale.LaunchID = "10.0.0.1:3999"
		require.NoError(t, WriteRendezvous(dir, stale))
		_, err := WaitRendezvous(ctx, fake(t), dir, want, 100*time.Millisecond, 10*time.Millisecond)
		assert.ErrorIs(t, err, ErrRendezvousTimeout)
		assert.Contains(t, err.Error(), "stale rendezvous")
	})
	t.Run("takes the head's file when it appears", func(t *testing.T) {
		clk := clock.NewFake()
		go func() {
			<-clk.Timers() // the worker looked and found only the stale file; the head publishes now
			r := want
			r.HeadAddress = "10.0.0.1"
			r.Ports.RayGCS = 6379
			WriteRendezvous(dir, r)
			clk.Advance(10 * time.Millisecond)
		}()
		r, err := WaitRendezvous(ctx, clk, dir, want, 5*time.Second, 10*time.Millisecond)
		require.NoError(t, err)
		assert.Equal(t, "10.0.0.1:6379", r.RayAddress())
	})
	t.Run("unparseable file", func(t *testing.T) {
		d := t.TempDir()
		require.NoError(t, os.WriteFile(filepath.Join(d, RendezvousFile), []byte("{"), 0o644))
		_, err := WaitRendezvous(ctx, fake(t), d, want, 50*time.Millisecond, 10*time.Millisecond)
		assert.ErrorContains(t, err, "parse rendezvous.json")
	})
	t.Run("cancelled", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_, err := WaitRendezvous(cctx, clock.NewFake(), t.TempDir(), want, time.Second, 10*time.Millisecond)
		assert.ErrorIs(t, err, context.Canceled)
	})
}

func TestNodeInfos(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, WriteNodeInfo(dir, NodeInfo{Host: "n2", Address: "10.0.0.2", MetricsPort: 9500, Role: "worker"}))
	require.NoError(t, WriteNodeInfo(dir, NodeInfo{Host: "n1", Address: "10.0.0.1", MetricsPort: 9500, Role: "head"}))
	infos := ReadNodeInfos(dir, []string{"n1", "n2", "n3"})
	require.Len(t, infos, 2)
	assert.Equal(t, "n1", infos[0].Host)
	assert.Equal(t, "http://10.0.0.2:9500/metrics", infos[1].MetricsURL())
}

func TestDashboardTunnelCommand(t *testing.T) {
	assert.Equal(t, "ssh -N -L 8265:127.0.0.1:8265 -J alice@login alice@gpu01", DashboardTunnelCommand(8265, "gpu01", "alice", "login"))
	assert.Equal(t, "ssh -N -L 1:127.0.0.1:1 -J USER@LOGIN-HOST USER@h", DashboardTunnelCommand(1, "h", "", ""))
}

func TestTargets(t *testing.T) {
	nodes := []NodeInfo{{Host: "n1", Address: "10.0.0.1", Role: "head", MetricsPort: 9542},
		{Host: "n2", Address: "fd00::2", Role: "worker", MetricsPort: 9542}}
	head := TargetGroup{Targets: []string{"10.0.0.1:9542"}, Labels: map[string]string{"job_id": "42", "node": "n1", "role": "head"}}
	worker := TargetGroup{Targets: []string{"[fd00::2]:9542"}, Labels: map[string]string{"job_id": "42", "node": "n2", "role": "worker"}}
	engine := TargetGroup{Targets: []string{"10.0.0.1:9542"},
		Labels: map[string]string{"job_id": "42", "node": "n1", "role": "engine", "__metrics_path__": "/metrics/engine"}}
	assert.Equal(t, []TargetGroup{head, engine, worker}, Targets("42", nodes, "/metrics/engine"))
	assert.Equal(t, []TargetGroup{head, worker}, Targets("42", nodes, ""), "no engine to scrape")
	assert.Empty(t, Targets("42", nil, "/metrics/engine"))

	// A worker that runs a replica has its engine's target too.
	nodes[1].ReplicaPorts = []int{8042}
	replica := TargetGroup{Targets: []string{"[fd00::2]:9542"},
		Labels: map[string]string{"job_id": "42", "node": "n2", "role": "engine", "__metrics_path__": "/metrics/engine"}}
	assert.Equal(t, []TargetGroup{head, engine, worker, replica}, Targets("42", nodes, "/metrics/engine"))

	// Two replicas on each node: each engine a target of its own, named as the gateway names it.
	nodes[0].ReplicaPorts, nodes[1].ReplicaPorts = []int{0, 8043}, []int{8042, 8043}
	slot := func(g TargetGroup, path, replica string) TargetGroup {
		labels := map[string]string{"replica": replica}
		for k, v := range g.Labels {
			labels[k] = v
		}
		labels["__metrics_path__"] = path
		return TargetGroup{Targets: g.Targets, Labels: labels}
	}
	assert.Equal(t, []TargetGroup{head, slot(engine, "/metrics/engine", "n1/0"), slot(engine, "/metrics/engine/1", "n1/1"),
		worker, slot(replica, "/metrics/engine", "n2/0"), slot(replica, "/metrics/engine/1", "n2/1")}, Targets("42", nodes, "/metrics/engine"))
}

// TestWritesFailWithReasons: each write names its file when the directory is gone or the value
// cannot be encoded.
func TestWritesFailWithReasons(t *testing.T) {
	gone := filepath.Join(t.TempDir(), "gone")
	assert.ErrorContains(t, WriteJSONAtomic(filepath.Join(gone, "x.json"), 1, 0o600), "x.json")
	assert.ErrorContains(t, WriteJSONAtomic(filepath.Join(t.TempDir(), "y.json"), func() {}, 0o600), "y.json")
	file := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	assert.Error(t, WriteNodeInfo(file, NodeInfo{Host: "n1"}), "a file where the state directory should be")
	_, err := NewConnectionWriter(file, Connection{JobID: "1"}, "k")
	assert.Error(t, err)
}

// TestNodeFileEnd: a node's end is added to what its file said; a stop is marked as one; a
// node that ends before it published its file still says why.
func TestNodeFileEnd(t *testing.T) {
	dir := t.TempDir()
	n2 := NewNodeFile(dir, "n2")
	require.NoError(t, n2.Publish(NodeInfo{Host: "n2", Address: "10.0.0.2", MetricsPort: 9500, Role: "worker"}))
	require.NoError(t, n2.End("ray on n2: gave up"))
	require.NoError(t, NewNodeFile(dir, "n3").End("")) // a node that never published its file
	infos := ReadNodeInfos(dir, []string{"n2", "n3"})
	require.Len(t, infos, 2)
	assert.Equal(t, NodeInfo{Host: "n2", Address: "10.0.0.2", MetricsPort: 9500, Role: "worker", Ended: "ray on n2: gave up"}, infos[0])
	assert.Equal(t, NodeInfo{Host: "n3", Stopping: true}, infos[1])
	assert.Equal(t, infos[0], n2.Snapshot())

	// A report made before the node's record is published is kept by it.
	n4 := NewNodeFile(dir, "n4")
	require.NoError(t, n4.EngineRestarts(1, 2))
	require.NoError(t, n4.End(""))
	require.NoError(t, n4.Publish(NodeInfo{Host: "other", Address: "10.0.0.4", ReplicaPorts: []int{1, 2}}))
	assert.Equal(t, NodeInfo{Host: "n4", Address: "10.0.0.4", ReplicaPorts: []int{1, 2}, EngineRestarts: []int{0, 2}, Stopping: true},
		ReadNodeInfos(dir, []string{"n4"})[0], "the host is the file's own")
}

// TestNodeFileConcurrentReports: reports made at once from several goroutines all reach the
// file. (A read, change and write of the file by each lost all but the last one's: a rank's end
// written during the drain took the stop mark away.)
func TestNodeFileConcurrentReports(t *testing.T) {
	dir := t.TempDir()
	f := NewNodeFile(dir, "n2")
	require.NoError(t, f.Publish(NodeInfo{Host: "n2", Address: "10.0.0.2", Role: "worker"}))
	const slots = 8
	var wg sync.WaitGroup
	for slot := range slots {
		wg.Add(1)
		go func() {
			defer wg.Done()
			assert.NoError(t, f.EngineRestarts(slot, slot+1))
		}()
	}
	wg.Add(2)
	go func() { defer wg.Done(); assert.NoError(t, f.EngineEnd(2, "signal: terminated")) }()
	go func() { defer wg.Done(); assert.NoError(t, f.End("")) }()
	wg.Wait()
	got := ReadNodeInfos(dir, []string{"n2"})
	require.Len(t, got, 1)
	assert.True(t, got[0].Stopping, "the stop mark is kept")
	assert.Equal(t, &EngineEnd{Generation: 2, Reason: "signal: terminated"}, got[0].EngineEnded)
	assert.Equal(t, []int{1, 2, 3, 4, 5, 6, 7, 8}, got[0].EngineRestarts)
	assert.Equal(t, "10.0.0.2", got[0].Address)
}

// TestNodeFileWriteFails: a report that cannot be written is an error, and the record stays as
// last written.
func TestNodeFileWriteFails(t *testing.T) {
	dir := t.TempDir()
	f := NewNodeFile(dir, "n2")
	require.NoError(t, f.Publish(NodeInfo{Host: "n2", Address: "10.0.0.2"}))
	require.NoError(t, os.RemoveAll(filepath.Join(dir, "nodes")))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "nodes"), nil, 0o644))
	assert.Error(t, f.End("failed"))
	assert.Empty(t, f.Snapshot().Ended)
}

func TestEngineGenerationAndRankEnds(t *testing.T) {
	dir := t.TempDir()
	g, err := ReadEngineGeneration(dir)
	require.NoError(t, err)
	assert.Zero(t, g, "none yet")
	require.NoError(t, WriteEngineGeneration(dir, 3))
	g, err = ReadEngineGeneration(dir)
	require.NoError(t, err)
	assert.Equal(t, 3, g)
	require.NoError(t, os.WriteFile(filepath.Join(dir, EngineFile), []byte("{"), 0o644))
	_, err = ReadEngineGeneration(dir)
	assert.ErrorContains(t, err, EngineFile)

	f := NewNodeFile(dir, "n2")
	require.NoError(t, f.Publish(NodeInfo{Host: "n2", Address: "10.0.0.2", MetricsPort: 9500, Role: "worker"}))
	require.NoError(t, f.EngineEnd(3, "exit status 1"))
	infos := ReadNodeInfos(dir, []string{"n2"})
	require.Len(t, infos, 1)
	assert.Equal(t, "10.0.0.2", infos[0].Address, "the rest of the node file is kept")
	assert.Equal(t, &EngineEnd{Generation: 3, Reason: "exit status 1"}, infos[0].EngineEnded)
}

func TestTunnelCommand(t *testing.T) {
	assert.Equal(t, "llm-agent tunnel --login alice@login 42", TunnelCommand("42", "alice", "login"))
	assert.Equal(t, "llm-agent tunnel --login USER@LOGIN-HOST 42", TunnelCommand("42", "", ""))
}

func TestFindConnection(t *testing.T) {
	home := t.TempDir()
	jobDir := filepath.Join(home, JobsDir, "77")
	require.NoError(t, os.MkdirAll(jobDir, 0o700))
	file := filepath.Join(jobDir, ConnectionFile)
	require.NoError(t, os.WriteFile(file, []byte("{}"), 0o600))
	for _, arg := range []string{"77", jobDir, file} {
		got, err := FindConnection(arg, home)
		require.NoError(t, err, arg)
		assert.Equal(t, file, got)
	}
	_, err := FindConnection("78", home)
	assert.ErrorIs(t, err, ErrNoJob)
	assert.Contains(t, err.Error(), filepath.Join(home, JobsDir, "78", ConnectionFile))
	_, err = FindConnection("", home)
	assert.ErrorIs(t, err, ErrNoJob)
	_, err = FindConnection("77", "")
	assert.ErrorIs(t, err, ErrNoJob, "no home: only paths")
}

// TestConnectionEverReady: the service has been ready once its file says ready_at, whatever
// its state since.
func TestConnectionEverReady(t *testing.T) {
	w, err := NewConnectionWriter(t.TempDir(), Connection{JobID: "5", State: StateStarting}, "sk-x")
	require.NoError(t, err)
	assert.False(t, w.EverReady())
	require.NoError(t, w.SetState(StateRestarting, "engine backoff"))
	assert.False(t, w.EverReady(), "a restart before the first ready")
	require.NoError(t, w.SetState(StateReady, ""))
	assert.True(t, w.EverReady())
	require.NoError(t, w.SetState(StateRestarting, "engine backoff"))
	assert.True(t, w.EverReady(), "ready once stays so")
}

// TestConnectionWriterRetries: a write that fails leaves no temporary file and is retried with
// the connection as it is then; Failed says why until a write succeeds.
func TestConnectionWriterRetries(t *testing.T) {
	dir := t.TempDir()
	w, err := NewConnectionWriter(dir, Connection{JobID: "7", State: StateStarting}, "")
	require.NoError(t, err)
	require.NoError(t, w.Retry(), "nothing to retry")
	path := filepath.Join(dir, ConnectionFile)
	require.NoError(t, os.Remove(path))
	require.NoError(t, os.MkdirAll(filepath.Join(path, "in-the-way"), 0o700)) // the rename cannot replace it
	require.Error(t, w.SetState(StateReady, ""))
	require.Error(t, w.Failed())
	require.Error(t, w.Retry())
	left, _ := filepath.Glob(filepath.Join(dir, ".connection.json.tmp-*"))
	assert.Empty(t, left, "no temporary file is left behind")
	require.NoError(t, os.RemoveAll(path))
	require.NoError(t, w.Retry())
	assert.NoError(t, w.Failed())
	c, err := ReadConnection(path)
	require.NoError(t, err)
	assert.Equal(t, StateReady, c.State, "the connection as it is now")
}
