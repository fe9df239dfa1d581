package head

import (
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/agent/node"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/slurm"
)

// TestCrashReportReachesTheHead: a worker whose agent left a crash report (jobfiles.RecordCrashes)
// and went silent is named with the report's first line, not guessed at.
func TestCrashReportReachesTheHead(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "logs"), 0o700))
	require.NoError(t, os.WriteFile(jobfiles.CrashFile(dir, "n2"), []byte("panic: boom in a stage\n\ngoroutine 7 [running]:\n"), 0o600))
	require.NoError(t, jobfiles.NewNodeFile(dir, "n2").Publish(jobfiles.NodeInfo{Host: "n2", Address: "127.0.0.1", MetricsPort: 1}))
	err := workerFailure(dir, []string{"n2"}, func(jobfiles.NodeInfo) reach { return refused })
	require.Error(t, err)
	assert.Equal(t, "n2's agent crashed: panic: boom in a stage (the whole report: "+jobfiles.CrashFile(dir, "n2")+"); Slurm ended the job step", err.Error())
}

// TestWorkerFailure: on a stop signal the head finds the worker whose end made Slurm end the
// step, by its published reason or by its silence, and nothing while every worker is there.
func TestWorkerFailure(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "nodes"), 0o700))
	alive, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer alive.Close()
	gone, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	gonePort := gone.Addr().(*net.TCPAddr).Port
	gone.Close() // a killed agent's port: nothing listens
	h := &head{env: &node.Env{StateDir: dir, Alloc: slurm.Allocation{Nodes: []string{"n1", "n2", "n3"}}}}
	write := func(host string, port int) {
		require.NoError(t, jobfiles.NewNodeFile(dir, host).Publish(jobfiles.NodeInfo{Host: host, Address: "127.0.0.1", MetricsPort: port}))
	}
	write("n2", alive.Addr().(*net.TCPAddr).Port)
	write("n3", alive.Addr().(*net.TCPAddr).Port)
	assert.NoError(t, h.workerFailure(), "every worker's agent answers: a stop on purpose")

	write("n3", gonePort)
	err = h.workerFailure()
	require.Error(t, err)
	assert.Equal(t, "n3's agent ended without a word (killed? its metrics port no longer answers); Slurm ended the job step", err.Error())

	require.NoError(t, jobfiles.NewNodeFile(dir, "n2").End("ray on n2: gave up restarting"))
	err = h.workerFailure()
	require.Error(t, err)
	assert.Equal(t, "n2's agent ended: ray on n2: gave up restarting; Slurm ended the job step", err.Error())
}

func TestWorkerFailureIgnoresAStoppingWorker(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "nodes"), 0o700))
	h := &head{env: &node.Env{StateDir: dir, Alloc: slurm.Allocation{Nodes: []string{"n1", "n2"}}}}
	require.NoError(t, jobfiles.WriteNodeInfo(dir, jobfiles.NodeInfo{Host: "n2", Address: "127.0.0.1", MetricsPort: 1}))
	require.Error(t, h.workerFailure(), "silent")
	require.NoError(t, jobfiles.NewNodeFile(dir, "n2").End(""))
	assert.NoError(t, h.workerFailure(), "a worker that said it was stopping has closed its port on purpose")
}

// TestWorkerFailureStopBetweenReadAndProbe: a worker that marks its stop and closes its port
// after the head read its file, before the head's probe, is not taken for a killed one (the
// head read the files once, before the probes, and so named a draining worker silent).
func TestWorkerFailureStopBetweenReadAndProbe(t *testing.T) {
	dir := t.TempDir()
	n2 := jobfiles.NewNodeFile(dir, "n2")
	require.NoError(t, n2.Publish(jobfiles.NodeInfo{Host: "n2", Address: "127.0.0.1", MetricsPort: 1}))
	require.NoError(t, jobfiles.NewNodeFile(dir, "n3").Publish(jobfiles.NodeInfo{Host: "n3", Address: "127.0.0.1", MetricsPort: 1}))
	probed := map[string]int{}
	var mu sync.Mutex
	drainsNow := func(n jobfiles.NodeInfo) reach {
		mu.Lock()
		defer mu.Unlock()
		probed[n.Host]++
		if n.Host == "n2" {
			require.NoError(t, n2.End("")) // its drain, just before its port closed
		}
		return refused
	}
	err := workerFailure(dir, []string{"n2", "n3"}, drainsNow)
	require.Error(t, err)
	assert.Equal(t, "n3's agent ended without a word (killed? its metrics port no longer answers); Slurm ended the job step", err.Error(),
		"n3 said nothing; n2 said it was stopping")
	assert.Equal(t, map[string]int{"n2": 1, "n3": 1}, probed, "each worker probed once")

	// One that published its failure between the read and the probe is named with its reason.
	require.NoError(t, jobfiles.NewNodeFile(dir, "n3").Publish(jobfiles.NodeInfo{Host: "n3", Address: "127.0.0.1", MetricsPort: 1}))
	n3 := jobfiles.NewNodeFile(dir, "n3")
	err = workerFailure(dir, []string{"n3"}, func(jobfiles.NodeInfo) reach {
		require.NoError(t, n3.End("engine rank on n3: gave up"))
		return refused
	})
	assert.EqualError(t, err, "n3's agent ended: engine rank on n3: gave up; Slurm ended the job step")
}

// TestWorkerUnreachable: a worker whose node does not answer at all (a partition, or a lost
// node) is named unreachable, not taken for a killed agent; one whose node refuses is killed.
func TestWorkerUnreachable(t *testing.T) {
	dir := t.TempDir()
	for _, host := range []string{"n2", "n3"} {
		require.NoError(t, jobfiles.NewNodeFile(dir, host).Publish(jobfiles.NodeInfo{Host: host, Address: "127.0.0.1", MetricsPort: 1}))
	}
	how := map[string]reach{"n2": refused, "n3": unreachable}
	err := workerFailure(dir, []string{"n2", "n3"}, func(n jobfiles.NodeInfo) reach { return how[n.Host] })
	assert.EqualError(t, err, "n3 unreachable: no answer from its agent's metrics port within 1s (a network partition or a lost node); Slurm ended the job step")
	how["n3"] = answered
	err = workerFailure(dir, []string{"n2", "n3"}, func(n jobfiles.NodeInfo) reach { return how[n.Host] })
	assert.EqualError(t, err, "n2's agent ended without a word (killed? its metrics port no longer answers); Slurm ended the job step")

	// The probe itself: a port nothing listens on is refused; one that answers, answered.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	assert.Equal(t, answered, probeAgent(jobfiles.NodeInfo{Address: "127.0.0.1", MetricsPort: port}))
	ln.Close()
	assert.Equal(t, refused, probeAgent(jobfiles.NodeInfo{Address: "127.0.0.1", MetricsPort: port}))
}
