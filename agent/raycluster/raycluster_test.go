package raycluster

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/ray"
)

// gcs answers each Nodes call with the next scripted answer, keeping the last.
type gcs struct {
	mu      sync.Mutex
	answers []answer
	calls   int
}

type answer struct {
	nodes []ray.Node
	err   error
}

func (g *gcs) Nodes(context.Context) ([]ray.Node, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	a := g.answers[min(g.calls, len(g.answers)-1)]
	g.calls++
	return a.nodes, a.err
}

func (g *gcs) script(a ...answer) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.answers, g.calls = a, 0
}

func node(id, host string, alive bool) ray.Node {
	return ray.Node{ID: id, Hostname: host, Address: "10.0.0." + host[len(host)-1:], Alive: alive}
}

// reported records what the view reports to the metrics.
type reported struct {
	mu          sync.Mutex
	alive, want int
}

func (r *reported) set(alive, want int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.alive, r.want = alive, want
}

func (r *reported) get() (int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.alive, r.want
}

func newCluster(g *gcs, r *reported) *Cluster {
	return New(Options{GCS: g, Hosts: func() ([]string, []string) { return []string{"n1", "n2", "n3"}, nil },
		SetNodes: r.set, Poll: time.Millisecond, LogsDir: "/state/logs"})
}

// TestWaitComplete: the view waits through a GCS that is not up yet and a node that has not
// joined, until one live node runs on every host; a second node on one host is not enough.
func TestWaitComplete(t *testing.T) {
	g, r := &gcs{}, &reported{}
	g.script(answer{err: ray.ErrUnreachable},
		answer{nodes: []ray.Node{node("a", "n1", true), node("b", "n2", true)}},
		answer{nodes: []ray.Node{node("a", "n1", true), node("b", "n2", true), node("c", "n2", true)}},
		answer{nodes: []ray.Node{node("a", "n1", true), node("b", "n2", true), node("c", "n3", true), node("old", "n3", false)}})
	c := newCluster(g, r)
	require.NoError(t, c.WaitComplete(context.Background(), 5*time.Second))
	assert.Equal(t, 4, g.calls, "complete at the fourth answer")
	alive, want := r.get()
	assert.Equal(t, 3, alive)
	assert.Equal(t, 3, want)
}

func TestWaitCompleteTimesOut(t *testing.T) {
	g, r := &gcs{}, &reported{}
	g.script(answer{nodes: []ray.Node{node("a", "n1", true), node("b", "n2", true)}})
	err := newCluster(g, r).WaitComplete(context.Background(), 50*time.Millisecond)
	require.ErrorIs(t, err, ErrIncomplete)
	assert.ErrorContains(t, err, "nodes that never joined: n3")
	assert.ErrorContains(t, err, "see their logs in /state/logs")
	var inc *IncompleteError
	require.ErrorAs(t, err, &inc)
	assert.Equal(t, []string{"n3"}, inc.Missing)

	g.script(answer{err: errors.New("gcs down")})
	err = newCluster(g, r).WaitComplete(context.Background(), 50*time.Millisecond)
	assert.ErrorContains(t, err, "nodes that never joined: n2, n3 (", "with no answer, every worker is missing")
	assert.ErrorContains(t, err, "gcs down")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	assert.ErrorIs(t, newCluster(g, r).WaitComplete(ctx, time.Minute), context.Canceled, "a stop is not a timeout")
}

// TestMonitorReportsALostNodeOnce: once complete, a node the cluster loses is reported once,
// until the cluster is complete again; a failed poll is no loss of its own.
func TestMonitorReportsALostNodeOnce(t *testing.T) {
	g, r := &gcs{}, &reported{}
	full := []ray.Node{node("aaaaaaaaaaaaaaaa", "n1", true), node("bbbbbbbbbbbbbbbb", "n2", true), node("cccccccccccccccc", "n3", true)}
	g.script(answer{nodes: full})
	c := newCluster(g, r)
	losses := make(chan []string, 10)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	// Before the cluster was complete, nothing is lost.
	go func() { c.Monitor(ctx, time.Millisecond, func(gone []string) { losses <- gone }); close(done) }()
	require.Eventually(t, func() bool { a, _ := r.get(); return a == 3 }, 5*time.Second, time.Millisecond)
	require.NoError(t, c.WaitComplete(context.Background(), time.Second))

	g.script(answer{err: errors.New("timeout")}, answer{nodes: full[:2]})
	select {
	case gone := <-losses:
		assert.Equal(t, []string{"cccccccccccc"}, gone, "the short id")
	case <-time.After(5 * time.Second):
		t.Fatal("the lost node was never reported")
	}
	require.Eventually(t, func() bool { g.mu.Lock(); defer g.mu.Unlock(); return g.calls > 5 }, 5*time.Second, time.Millisecond)
	assert.Empty(t, losses, "reported once")
	alive, want := r.get()
	assert.Equal(t, 2, alive)
	assert.Equal(t, 3, want)
	assert.True(t, c.Lost())

	g.script(answer{nodes: full})
	require.NoError(t, c.WaitComplete(context.Background(), time.Second), "complete again: armed again")
	assert.False(t, c.Lost())
	g.script(answer{nodes: full[1:]})
	select {
	case gone := <-losses:
		assert.Equal(t, []string{"aaaaaaaaaaaa"}, gone)
	case <-time.After(5 * time.Second):
		t.Fatal("the second loss was never reported")
	}
	cancel()
	<-done
}
