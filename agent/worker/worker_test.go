package worker

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/agent/metrics"
	"github.com/llm-agent/llm-agent/agent/node"
	"github.com/llm-agent/llm-agent/clock"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/slurm"
)

// testEnv is a worker's environment over a fresh state directory.
func testEnv(t *testing.T) *node.Env {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "nodes"), 0o700))
	alloc := slurm.Allocation{JobID: "7", Nodes: []string{"n1", "n2"}, NodeID: 1}
	return &node.Env{Log: hclog.NewNullLogger(), Clock: clock.Real{}, Alloc: alloc, StateDir: dir,
		State: metrics.NewState("n2", "7", "worker", 0, 1, time.Now(), time.Time{}),
		File:  jobfiles.NewNodeFile(dir, "n2")}
}

// TestIdleStage: a node the engine does not use is ready as soon as it reports.
func TestIdleStage(t *testing.T) {
	e := testEnv(t)
	ok, _ := e.State.Ready()
	require.False(t, ok)
	done, err := idleStage(e).Start(t.Context())
	require.NoError(t, err)
	assert.Nil(t, done, "nothing keeps running")
	ok, _ = e.State.Ready()
	assert.True(t, ok)
}

// TestDrainMarksTheStop: a requested stop is in the node file before the stages stop, so that
// the head does not take the worker's silence for a killed agent; a failure is not a stop.
func TestDrainMarksTheStop(t *testing.T) {
	e := testEnv(t)
	require.NoError(t, e.File.Publish(jobfiles.NodeInfo{Host: "n2", Address: "127.0.0.1", MetricsPort: 1}))
	boom := errors.New("ray on n2: gave up")
	assert.Equal(t, boom, drain(e)(boom))
	infos := jobfiles.ReadNodeInfos(e.StateDir, []string{"n2"})
	require.Len(t, infos, 1)
	assert.False(t, infos[0].Stopping, "a failure is reported by the agent's end, not as a stop")

	e.State.SetReady(true, "", time.Now())
	assert.NoError(t, drain(e)(nil))
	infos = jobfiles.ReadNodeInfos(e.StateDir, []string{"n2"})
	require.Len(t, infos, 1)
	assert.True(t, infos[0].Stopping)
	ok, why := e.State.Ready()
	assert.False(t, ok)
	assert.Equal(t, "stopping", why)
}

// TestRunStopsWhileWaiting: a worker asked to stop before the head published anything ends
// cleanly, and one whose head never publishes fails within the rendezvous timeout.
func TestRunStopsWhileWaiting(t *testing.T) {
	e := testEnv(t)
	e.Cfg.RendezvousTimeout = time.Minute
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	assert.NoError(t, Run(ctx, e))

	e.Cfg.RendezvousTimeout = 300 * time.Millisecond
	assert.Error(t, Run(t.Context(), e))
}

// TestRunFailsItsPreparation: a worker whose part of the model's preparation fails says why,
// after the head's rendezvous and before any stage starts.
func TestRunFailsItsPreparation(t *testing.T) {
	e := testEnv(t)
	e.Ports, e.Getenv = node.TCPProber{}, func(string) string { return "" }
	e.Cfg.RendezvousTimeout = 5 * time.Second
	e.Cfg.StageDir, e.Cfg.Model = t.TempDir(), "org/not-in-any-cache"
	rv := e.RendezvousID()
	rv.Launcher, rv.Pipeline, rv.Tensor, rv.HeadAddress = "mp", 2, 1, "127.0.0.1"
	require.NoError(t, jobfiles.WriteRendezvous(e.StateDir, rv))
	err := Run(t.Context(), e)
	assert.ErrorContains(t, err, "--stage-dir")
	infos := jobfiles.ReadNodeInfos(e.StateDir, []string{"n2"})
	assert.Empty(t, infos, "no stage started: the node never published")
}
