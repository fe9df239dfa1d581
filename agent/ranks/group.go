// Package ranks is the launcher without Ray (--launcher mp): vLLM's own multi-node mode, one
// rank of the engine on each node. Rank 0, on the head, serves the API behind the gateway; the
// others run headless. The ranks live and die together: each start of the head's rank is a new
// generation of the engine (engine.json), and every worker starts its rank for the current
// generation, restarts it when the generation moves on, and reports in its node file a rank
// that ended by itself, for the head to restart the whole group. The head's restart policy is
// the group's. Group is the head's side, Stage a worker's.
package ranks

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/node"
	"github.com/llm-agent/llm-agent/agent/raycluster"
	"github.com/llm-agent/llm-agent/healthcheck"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/vllm"
)

// ErrIncomplete is returned when not every worker published its file in time: the same error
// as a Ray cluster whose nodes did not all join.
var ErrIncomplete = raycluster.ErrIncomplete

// Timings of the group's waits.
const (
	// generationPollInterval is how often a worker reads engine.json, and the head the
	// workers' reports of ranks that ended.
	generationPollInterval = time.Second
	publishedPollInterval  = time.Second            // every worker's node file, before rank 0 starts
	stopPollInterval       = 100 * time.Millisecond // a stop showing, after rank 0 ended
)

// Restarter restarts the engine group, through its rank 0's supervisor.
type Restarter interface {
	Restart(cause, reason string)
}

// Group is the head's side of the ranks: it publishes the layout, counts the generations of
// rank 0, holds its start until every worker is there, and restarts the group when a worker's
// rank ended by itself.
type Group struct {
	env   *node.Env
	ports jobfiles.Ports
	// generation counts the starts of rank 0; running is the generation of the rank 0 that
	// runs now, 0 while none does.
	generation, running atomic.Int64
}

// NewGroup returns the head's side of the ranks over the head's ports.
func NewGroup(e *node.Env, ports jobfiles.Ports) *Group {
	return &Group{env: e, ports: ports}
}

// Active tells whether the engine runs as ranks on every node: --launcher mp, and a pipeline
// across the nodes. With a pipeline of 1 the engine stays on the head, as with Ray.
func (g *Group) Active() bool {
	return g.env.RanksOnNodes() && g.env.Par.Pipeline > 1
}

// hosts are the nodes that run a rank of the engine besides the head: one per pipeline stage,
// as Ray places them; the nodes past the pipeline only report.
func (g *Group) hosts() []string {
	return g.env.Alloc.Nodes[1:min(g.env.Par.Pipeline, len(g.env.Alloc.Nodes))]
}

// Publish, with --launcher mp, publishes rv, the head's rendezvous, at once: there is no Ray
// head to wait for. It carries the engine's sizes, which every rank starts with. A generation
// file left by an earlier run goes first, so that no worker starts a rank for it.
func (g *Group) Publish(rv jobfiles.Rendezvous) error {
	e := g.env
	if err := os.Remove(filepath.Join(e.StateDir, jobfiles.EngineFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove the last run's %s: %w", jobfiles.EngineFile, err)
	}
	rv.Launcher, rv.Tensor, rv.Pipeline = config.LauncherMP, e.Par.Tensor, e.Par.Pipeline
	if err := jobfiles.WriteRendezvous(e.StateDir, rv); err != nil {
		return err
	}
	e.Log.Info("rendezvous published; no Ray with --launcher mp", "engine_ranks", g.Active(), "master_port", g.ports.EngineMaster)
	return nil
}

// Spec is the head's rank 0 added to spec, and env the variables rank 0 needs beside it.
func (g *Group) Spec(spec vllm.ServeSpec, env []string) (vllm.ServeSpec, []string) {
	spec.Nodes, spec.NodeRank = g.env.Par.Pipeline, 0
	spec.MasterAddr, spec.MasterPort = g.env.Addr, g.ports.EngineMaster
	return spec, append(env, "VLLM_PORT="+strconv.Itoa(g.ports.EngineRPC))
}

// NextGeneration publishes the generation the head's next rank 0 starts.
func (g *Group) NextGeneration() error {
	return jobfiles.WriteEngineGeneration(g.env.StateDir, int(g.generation.Add(1)))
}

// Running records whether rank 0, of the current generation, runs.
func (g *Group) Running(up bool) {
	if up {
		g.running.Store(g.generation.Load())
	} else {
		g.running.Store(0)
	}
}

// stopping tells whether a worker that runs a rank was asked to stop (its node file says so
// before its agent stops its rank).
func (g *Group) stopping() bool {
	return slices.ContainsFunc(jobfiles.ReadNodeInfos(g.env.StateDir, g.hosts()), func(n jobfiles.NodeInfo) bool { return n.Stopping })
}

// StopShows tells whether the job is stopping, waiting up to node.StopSettle for the signal to
// reach this agent or a worker's node file: rank 0 ending then is part of the stop, not a
// crash to restart and count. A true crash restarts that much later.
func (g *Group) StopShows() bool {
	e := g.env
	deadline := e.Clock.Now().Add(node.StopSettle)
	for {
		if e.Stopping() || g.stopping() {
			return true
		}
		if !e.Clock.Now().Before(deadline) {
			return false
		}
		<-e.Clock.After(stopPollInterval)
	}
}

// Wait blocks until every worker's agent has published its node file, and so will start its
// rank, within --ray-timeout.
func (g *Group) Wait(ctx context.Context) error {
	e := g.env
	wctx, cancel := context.WithTimeout(ctx, e.Cfg.RayTimeout)
	defer cancel()
	var missing []string
	err := healthcheck.WaitReady(wctx, e.Clock, publishedPollInterval, func(context.Context) error {
		missing = missing[:0]
		have := map[string]bool{}
		hosts := g.hosts()
		for _, n := range jobfiles.ReadNodeInfos(e.StateDir, hosts) {
			have[n.Host] = true
		}
		for _, host := range hosts {
			if !have[host] {
				missing = append(missing, host)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("%d of %d workers published", len(hosts)-len(missing), len(hosts))
		}
		return nil
	})
	if err == nil || ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("%w: not every worker came up within %s: %s; see their logs in %s",
		ErrIncomplete, e.Cfg.RayTimeout, strings.Join(missing, ", "), filepath.Join(e.StateDir, "logs"))
}

// Watch restarts the engine group through engine when a worker's rank of the running
// generation ended by itself: the head's rank 0 cannot serve without it. When rank 0 ended
// first (vLLM's rank 0 fails with a rank it lost), its own restart starts the next generation.
func (g *Group) Watch(ctx context.Context, engine Restarter) {
	handled := 0
	for {
		gen := int(g.running.Load())
		for _, n := range jobfiles.ReadNodeInfos(g.env.StateDir, g.hosts()) {
			if ended := n.EngineEnded; ended != nil && gen > 0 && ended.Generation == gen && gen > handled {
				handled = gen
				reason := fmt.Sprintf("%s's rank of the engine ended: %s", n.Host, ended.Reason)
				g.env.Log.Warn("restarting the engine's ranks", "reason", reason)
				engine.Restart("rank_ended", reason)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-g.env.Clock.After(generationPollInterval):
		}
	}
}
