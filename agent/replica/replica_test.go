package replica

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/metrics"
	"github.com/llm-agent/llm-agent/agent/node"
	"github.com/llm-agent/llm-agent/agent/secrets"
	"github.com/llm-agent/llm-agent/clock"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/slurm"
)

// TestReplicaRefusals: a replica starts nothing without the run's replica key, and says which
// port it could not bind.
func TestReplicaRefusals(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "logs"), 0o700))
	e := &node.Env{Cfg: config.Default(), Log: hclog.NewNullLogger(), Clock: clock.Real{}, Getenv: func(string) string { return "" },
		Alloc: slurm.Allocation{JobID: "7", Nodes: []string{"n1", "n2"}, NodeID: 1}, StateDir: dir, LocalDir: t.TempDir(),
		Addr: "127.0.0.1", State: metrics.NewState("n2", "7", "worker", 0, 1, time.Now(), time.Time{})}
	_, err := Stage(t.Context(), e, jobfiles.Rendezvous{Tensor: 1}, 0, 0).Start(t.Context())
	assert.ErrorContains(t, err, "replica key", "no key: the head's rendezvous was not for replicas")

	_, err = secrets.WriteReplicaKey(dir)
	require.NoError(t, err)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	port := busy.Addr().(*net.TCPAddr).Port
	_, err = Stage(t.Context(), e, jobfiles.Rendezvous{Tensor: 1}, port, 0).Start(t.Context())
	assert.ErrorIs(t, err, node.ErrPort)
	assert.ErrorContains(t, err, "replica port "+strconv.Itoa(port))
}

// TestTensorOf: a host's replica takes its model's GPUs in a job of several models.
func TestTensorOf(t *testing.T) {
	rv := jobfiles.Rendezvous{Tensor: 4, Models: []jobfiles.ModelPlacement{{Name: "a", Nodes: []string{"n1"}, Tensor: 2}, {Name: "b", Nodes: []string{"n2"}}}}
	assert.Equal(t, 2, tensorOf(rv, "n1"))
	assert.Equal(t, 4, tensorOf(rv, "n2"), "no tensor of its own: the job's")
	assert.Equal(t, 4, tensorOf(rv, "n3"))
}
