// Package raycluster is the job's Ray cluster as the head sees it through the GCS: whether every
// node of the job has joined, and which of the nodes the engine started on it has lost since.
// It starts nothing: the Ray processes are the supervisor's children.
package raycluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/llm-agent/llm-agent/clock"
	"github.com/llm-agent/llm-agent/healthcheck"
	"github.com/llm-agent/llm-agent/ray"
)

// ErrIncomplete is returned when not every node joined Ray in time.
var ErrIncomplete = errors.New("ray cluster incomplete")

// IncompleteError is WaitComplete's ErrIncomplete, with the hosts that did not join.
type IncompleteError struct {
	Missing []string
	msg     string
}

func (e *IncompleteError) Error() string { return e.msg }
func (e *IncompleteError) Unwrap() error { return ErrIncomplete }

// NodeLister lists the nodes the GCS knows (ray.Client).
type NodeLister interface {
	Nodes(ctx context.Context) ([]ray.Node, error)
}

var _ NodeLister = ray.Client{}

// Options are what the cluster's view reads and reports.
type Options struct {
	GCS NodeLister
	// Hosts returns the job's hosts and, where known, their addresses, in node order; the
	// first is the head.
	Hosts func() (hosts, addresses []string)
	// SetNodes reports the live Ray nodes and how many the job wants (the metrics).
	SetNodes func(alive, want int)
	Clock    clock.Clock
	Log      hclog.Logger
	// Poll is how often WaitComplete asks the GCS.
	Poll time.Duration
	// LogsDir is where the nodes' logs are, for the error that names the missing ones.
	LogsDir string
}

// Cluster is the view: the nodes alive when the engine last started, and whether one of them
// has been lost since.
type Cluster struct {
	o    Options
	mu   sync.Mutex
	ids  map[string]bool
	lost bool
}

// New returns the view of a cluster that is not complete yet.
func New(o Options) *Cluster {
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.Log == nil {
		o.Log = hclog.NewNullLogger()
	}
	return &Cluster{o: o}
}

// WaitComplete blocks, up to timeout, until exactly one live Ray node runs on every host of the
// job, then remembers those nodes: losing one of them later is what Monitor reports.
func (c *Cluster) WaitComplete(ctx context.Context, timeout time.Duration) error {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	hosts, _ := c.o.Hosts()
	want := len(hosts)
	var missing []string
	err := healthcheck.WaitReady(wctx, c.o.Clock, c.o.Poll, func(ctx context.Context) error {
		nodes, err := c.o.GCS.Nodes(ctx)
		if err != nil {
			missing = hosts[1:]
			return err
		}
		hosts, addrs := c.o.Hosts()
		alive := ray.Alive(nodes)
		missing = ray.Missing(nodes, hosts, addrs)
		c.o.SetNodes(len(alive), want)
		if len(missing) > 0 || len(alive) != want {
			return fmt.Errorf("%d of %d ray nodes alive", len(alive), want)
		}
		ids := map[string]bool{}
		for _, n := range alive {
			ids[n.ID] = true
		}
		c.mu.Lock()
		c.ids, c.lost = ids, false
		c.mu.Unlock()
		return nil
	})
	if err == nil {
		c.o.Log.Info("ray cluster complete", "nodes", want)
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return &IncompleteError{Missing: missing, msg: fmt.Sprintf("%v: not every node joined within %s; nodes that never joined: %s (%v); see their logs in %s",
		ErrIncomplete, timeout, strings.Join(missing, ", "), err, c.o.LogsDir)}
}

// Lost tells whether a node of the complete cluster has been lost since WaitComplete last
// found it whole.
func (c *Cluster) Lost() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lost
}

// Monitor asks the GCS every interval until ctx ends, and calls lost, once, with the (short)
// ids of the nodes of the complete cluster that are gone; WaitComplete arms it again. A poll
// that fails reports nothing.
func (c *Cluster) Monitor(ctx context.Context, interval time.Duration, lost func(gone []string)) {
	hosts, _ := c.o.Hosts()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.o.Clock.After(interval):
		}
		nodes, err := c.o.GCS.Nodes(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			// No answer is no news: the query may time out under load while every node runs.
			// A GCS that stays gone ends the Ray head, which the supervisor restarts.
			c.o.Log.Debug("ray node poll failed", "error", err)
			continue
		}
		alive := map[string]bool{}
		for _, n := range ray.Alive(nodes) {
			alive[n.ID] = true
		}
		c.o.SetNodes(len(alive), len(hosts))
		if gone := c.gone(alive); len(gone) > 0 {
			lost(gone)
		}
	}
}

// gone marks the cluster lost and returns the nodes it lost, the first time they are missing
// from alive.
func (c *Cluster) gone(alive map[string]bool) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ids == nil || c.lost {
		return nil
	}
	var gone []string
	for id := range c.ids {
		if !alive[id] {
			gone = append(gone, id[:min(12, len(id))])
		}
	}
	c.lost = len(gone) > 0
	return gone
}
