package head

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/node"
	"github.com/llm-agent/llm-agent/agent/raycluster"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/ray"
)

// TestNodesLost: a node Ray lost that did not come back is named by how its agent answers:
// unreachable (nothing at all, or no node file), gone (refused), or there but out of Ray.
func TestNodesLost(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "nodes"), 0o700))
	for _, h := range []string{"n2", "n3"} {
		require.NoError(t, jobfiles.NewNodeFile(dir, h).Publish(jobfiles.NodeInfo{Host: h, Address: "127.0.0.1", MetricsPort: 1}))
	}
	probe := func(r map[string]reach) func(jobfiles.NodeInfo) reach {
		return func(n jobfiles.NodeInfo) reach { return r[n.Host] }
	}
	err := nodesLost(dir, []string{"n3", "n2"}, time.Minute, probe(map[string]reach{"n2": unreachable, "n3": refused}))
	require.ErrorIs(t, err, raycluster.ErrIncomplete)
	assert.Equal(t, "ray cluster incomplete: n2 unreachable: Ray lost it while serving and it did not join again within 1m0s (--node-lost-timeout), and its agent's metrics port gives no answer within 1s (a network partition or a lost node)", err.Error())

	err = nodesLost(dir, []string{"n3"}, time.Minute, probe(map[string]reach{"n3": refused}))
	assert.ErrorContains(t, err, "n3's agent is gone (its metrics port refuses)")

	err = nodesLost(dir, []string{"n2"}, 30*time.Second, probe(map[string]reach{"n2": answered}))
	assert.ErrorContains(t, err, "n2 did not join Ray again within 30s (--node-lost-timeout) after Ray lost it; its agent answers: see its Ray log in "+filepath.Join(dir, "logs"))

	err = nodesLost(dir, []string{"n4"}, time.Minute, probe(nil))
	assert.ErrorContains(t, err, "n4 unreachable", "no node file: nothing known of it")
}

// oneGCS answers with nodes, which the test changes.
type oneGCS struct {
	mu    sync.Mutex
	nodes []ray.Node
}

func (g *oneGCS) Nodes(context.Context) ([]ray.Node, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.nodes, nil
}

func (g *oneGCS) set(n ...ray.Node) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.nodes = n
}

// TestWaitClusterAfterALoss: the engine's gate waits --ray-timeout at the start and only
// --node-lost-timeout once Ray lost a node, then names the node (no node file here: unreachable).
func TestWaitClusterAfterALoss(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "nodes"), 0o700))
	n1 := ray.Node{ID: "aaaaaaaaaaaaaaaa", Hostname: "n1", Address: "10.0.0.1", Alive: true}
	n2 := ray.Node{ID: "bbbbbbbbbbbbbbbb", Hostname: "n2", Address: "10.0.0.2", Alive: true}
	g := &oneGCS{}
	g.set(n1, n2)
	cl := raycluster.New(raycluster.Options{GCS: g, Hosts: func() ([]string, []string) { return []string{"n1", "n2"}, nil },
		SetNodes: func(int, int) {}, Poll: time.Millisecond})
	h := &head{env: &node.Env{StateDir: dir, Cfg: config.Config{RayTimeout: time.Hour, NodeLostTimeout: 50 * time.Millisecond}}, ray: cl}
	require.NoError(t, h.waitCluster(context.Background()))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lost := make(chan []string, 1)
	go cl.Monitor(ctx, time.Millisecond, func(gone []string) { lost <- gone })
	g.set(n1)
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		t.Fatal("the loss was never seen")
	}
	start := time.Now()
	err := h.waitCluster(context.Background())
	require.ErrorIs(t, err, raycluster.ErrIncomplete)
	assert.Less(t, time.Since(start), 10*time.Second, "the short bound, not --ray-timeout's hour")
	assert.ErrorContains(t, err, "n2 unreachable: Ray lost it while serving")
}
