package agent

import (
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/slurm"
)

func TestLoadAPIKey(t *testing.T) {
	k1, err := LoadAPIKey("")
	require.NoError(t, err)
	k2, _ := LoadAPIKey("")
	assert.NotEqual(t, k1, k2)
	assert.Regexp(t, `^sk-llm-[0-9a-f]{48}$`, k1)

	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	require.NoError(t, os.WriteFile(good, []byte("sk-mine\n"), 0o600))
	k, err := LoadAPIKey(good)
	require.NoError(t, err)
	assert.Equal(t, "sk-mine", k)

	open := filepath.Join(dir, "open")
	require.NoError(t, os.WriteFile(open, []byte("sk-mine\n"), 0o644))
	_, err = LoadAPIKey(open)
	assert.ErrorIs(t, err, config.ErrInvalid)
	assert.ErrorContains(t, err, "chmod 600")
	assert.NotContains(t, err.Error(), "sk-mine", "the key never appears in an error")

	two := filepath.Join(dir, "two")
	require.NoError(t, os.WriteFile(two, []byte("a\nb\n"), 0o600))
	_, err = LoadAPIKey(two)
	assert.ErrorContains(t, err, "exactly one key")
	_, err = LoadAPIKey(filepath.Join(dir, "missing"))
	assert.ErrorIs(t, err, config.ErrInvalid)
}

func TestRemoveStaleSocket(t *testing.T) {
	dir := t.TempDir()
	assert.NoError(t, removeStaleSocket(""), "no socket in use")
	sock := filepath.Join(dir, "engine.sock")
	assert.NoError(t, removeStaleSocket(sock), "none left")
	ln, err := net.Listen("unix", sock)
	require.NoError(t, err)
	ln.(*net.UnixListener).SetUnlinkOnClose(false) // as a SIGKILLed engine leaves it
	ln.Close()
	require.FileExists(t, sock)
	assert.NoError(t, removeStaleSocket(sock))
	assert.NoFileExists(t, sock)
	require.NoError(t, os.WriteFile(sock, nil, 0o600))
	assert.ErrorContains(t, removeStaleSocket(sock), "not a socket")
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
	h := &head{agent: &agent{stateDir: dir, alloc: slurm.Allocation{Nodes: []string{"n1", "n2", "n3"}}}}
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
	h := &head{agent: &agent{stateDir: dir, alloc: slurm.Allocation{Nodes: []string{"n1", "n2"}}}}
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
	drainsNow := func(n jobfiles.NodeInfo) bool {
		mu.Lock()
		defer mu.Unlock()
		probed[n.Host]++
		if n.Host == "n2" {
			require.NoError(t, n2.End("")) // its drain, just before its port closed
		}
		return false
	}
	err := workerFailure(dir, []string{"n2", "n3"}, drainsNow)
	require.Error(t, err)
	assert.Equal(t, "n3's agent ended without a word (killed? its metrics port no longer answers); Slurm ended the job step", err.Error(),
		"n3 said nothing; n2 said it was stopping")
	assert.Equal(t, map[string]int{"n2": 1, "n3": 1}, probed, "each worker probed once")

	// One that published its failure between the read and the probe is named with its reason.
	require.NoError(t, jobfiles.NewNodeFile(dir, "n3").Publish(jobfiles.NodeInfo{Host: "n3", Address: "127.0.0.1", MetricsPort: 1}))
	n3 := jobfiles.NewNodeFile(dir, "n3")
	err = workerFailure(dir, []string{"n3"}, func(jobfiles.NodeInfo) bool {
		require.NoError(t, n3.End("engine rank on n3: gave up"))
		return false
	})
	assert.EqualError(t, err, "n3's agent ended: engine rank on n3: gave up; Slurm ended the job step")
}
