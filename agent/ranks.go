package agent

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/internal/linelog"
	"github.com/llm-agent/llm-agent/agent/lifecycle"
	"github.com/llm-agent/llm-agent/healthcheck"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/ray"
	"github.com/llm-agent/llm-agent/supervisor"
	"github.com/llm-agent/llm-agent/vllm"
)

// The launcher without Ray (--launcher mp): vLLM's own multi-node mode, one rank of the engine
// on each node. Rank 0, on the head, serves the API behind the gateway; the others run
// headless. The ranks live and die together: each start of the head's rank is a new
// generation of the engine (engine.json), and every worker starts its rank for the current
// generation, restarts it when the generation moves on, and reports in its node file a rank
// that ended by itself, for the head to restart the whole group. The head's restart policy is
// the group's.

// generationPollInterval is how often a worker reads engine.json, and the head the workers'
// reports of ranks that ended.
const generationPollInterval = time.Second

// engineRanks tells whether the engine runs as ranks on every node: --launcher mp, and a
// pipeline across the nodes. With a pipeline of 1 the engine stays on the head, as with Ray.
func (h *head) engineRanks() bool {
	return h.ranksOnNodes() && h.par.Pipeline > 1
}

// rankHosts are the nodes that run a rank of the engine besides the head: one per pipeline
// stage, as Ray places them; the nodes past the pipeline only report.
func (h *head) rankHosts() []string {
	return h.alloc.Nodes[1:min(h.par.Pipeline, len(h.alloc.Nodes))]
}

// publishLayout, with --launcher mp, publishes the rendezvous at once: there is no Ray head to
// wait for. It carries the engine's sizes, which every rank starts with. A generation file left
// by an earlier run goes first, so that no worker starts a rank for it.
func (h *head) publishLayout() error {
	a := h.agent
	if err := os.Remove(filepath.Join(a.stateDir, jobfiles.EngineFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove the last run's %s: %w", jobfiles.EngineFile, err)
	}
	rv := h.rendezvous()
	rv.Launcher, rv.Tensor, rv.Pipeline = config.LauncherMP, h.par.Tensor, h.par.Pipeline
	if err := jobfiles.WriteRendezvous(a.stateDir, rv); err != nil {
		return err
	}
	a.log.Info("rendezvous published; no Ray with --launcher mp", "engine_ranks", h.engineRanks(), "master_port", h.ports.EngineMaster)
	return nil
}

// rankSpec is the head's rank 0 added to spec.
func (h *head) rankSpec(spec vllm.ServeSpec) vllm.ServeSpec {
	spec.Nodes, spec.NodeRank = h.par.Pipeline, 0
	spec.MasterAddr, spec.MasterPort = h.addr, h.ports.EngineMaster
	return spec
}

// nextGeneration publishes the generation the head's next rank 0 starts.
func (h *head) nextGeneration() error {
	return jobfiles.WriteEngineGeneration(h.stateDir, int(h.generation.Add(1)))
}

// rankRunning records whether rank 0, of the current generation, runs.
func (h *head) rankRunning(up bool) {
	if up {
		h.running.Store(h.generation.Load())
	} else {
		h.running.Store(0)
	}
}

// rankStopping tells whether a worker that runs a rank was asked to stop (its node file says
// so before its agent stops its rank).
func (h *head) rankStopping() bool {
	return slices.ContainsFunc(jobfiles.ReadNodeInfos(h.stateDir, h.rankHosts()), func(n jobfiles.NodeInfo) bool { return n.Stopping })
}

// stopShows tells whether the job is stopping, waiting up to stopSettle for the signal to
// reach this agent or a worker's node file: rank 0 ending then is part of the stop, not a
// crash to restart and count. A true crash restarts that much later.
func (h *head) stopShows() bool {
	a := h.agent
	deadline := a.deps.Clock.Now().Add(stopSettle)
	for {
		if a.stopping() || h.rankStopping() {
			return true
		}
		if !a.deps.Clock.Now().Before(deadline) {
			return false
		}
		<-a.deps.Clock.After(stopPollInterval)
	}
}

// waitRanks blocks until every worker's agent has published its node file, and so will start
// its rank, within --ray-timeout.
func (h *head) waitRanks(ctx context.Context) error {
	a := h.agent
	wctx, cancel := context.WithTimeout(ctx, a.cfg.RayTimeout)
	defer cancel()
	var missing []string
	err := healthcheck.WaitReady(wctx, a.deps.Clock, clusterPollInterval, func(context.Context) error {
		missing = missing[:0]
		have := map[string]bool{}
		hosts := h.rankHosts()
		for _, n := range jobfiles.ReadNodeInfos(a.stateDir, hosts) {
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
		ErrRayIncomplete, a.cfg.RayTimeout, strings.Join(missing, ", "), filepath.Join(a.stateDir, "logs"))
}

// watchRanks restarts the engine group when a worker's rank of the running generation ended
// by itself: the head's rank 0 cannot serve without it. When rank 0 ended first (vLLM's rank 0
// fails with a rank it lost), its own restart starts the next generation.
func (h *head) watchRanks(ctx context.Context) {
	handled := 0
	for {
		gen := int(h.running.Load())
		for _, n := range jobfiles.ReadNodeInfos(h.stateDir, h.rankHosts()) {
			if e := n.EngineEnded; e != nil && gen > 0 && e.Generation == gen && gen > handled {
				handled = gen
				reason := fmt.Sprintf("%s's rank of the engine ended: %s", n.Host, e.Reason)
				h.log.Warn("restarting the engine's ranks", "reason", reason)
				h.engine.Restart("rank_ended", reason)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-h.deps.Clock.After(generationPollInterval):
		}
	}
}

// workerRankStage runs this worker's rank of the engine, generation after generation, until
// the run ends.
func (a *agent) workerRankStage(run context.Context, rv jobfiles.Rendezvous) lifecycle.Stage {
	var stop func()
	return lifecycle.Stage{Name: "engine rank", Start: func(context.Context) (<-chan error, error) {
		r, err := a.newRank(rv)
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithCancel(run)
		errc := make(chan error, 1)
		go func() {
			defer r.closeOut()
			errc <- r.svc.Run(ctx)
		}()
		stopFollow := lifecycle.Background(run, r.follow)
		done, finished := lifecycle.Ended(errc, func(err error) error { return fmt.Errorf("engine rank on %s: %w", a.alloc.Hostname(), err) })
		stop = func() {
			stopFollow()
			cancel()
			<-finished
		}
		return done, nil
	}, Stop: func() { stop() }}
}

// rank is a worker's supervised rank of the engine.
type rank struct {
	a        *agent
	svc      *supervisor.Service
	out      *linelog.Logger
	closeOut func()

	mu sync.Mutex
	// started is the generation of the last rank started; running is that of the rank that
	// runs now, 0 while none does.
	started, running int
}

func (a *agent) newRank(rv jobfiles.Rendezvous) (*rank, error) {
	r := &rank{a: a}
	// A headless rank serves no API: the adapters added at run time reach it through rank 0,
	// and its command line carries those of --lora, with the same --max-lora-rank.
	opts, out, closeOut, err := a.engineOptions(engineChild{name: "vllm",
		spec: vllm.ServeSpec{Model: a.engineModel(), ServedName: a.cfg.ServedName(), Tensor: rv.Tensor, Pipeline: rv.Pipeline,
			Nodes: rv.Pipeline, NodeRank: a.alloc.NodeID,
			MasterAddr: rv.HeadAddress, MasterPort: rv.Ports.EngineMaster, Extra: a.cfg.VLLMArgs},
		env:     append(ray.Env(a.addr, a.ifname), "VLLM_PORT="+strconv.Itoa(rv.Ports.EngineRPC)),
		onEvent: r.onEvent})
	if err != nil {
		return nil, err
	}
	r.out, r.closeOut = out, closeOut
	// The head's policy is the group's: this rank follows the generations and never gives up
	// by itself.
	opts.Policy.MaxRestarts = math.MaxInt32
	opts.Policy.Max = opts.Policy.Initial
	opts.Before = r.awaitGeneration
	r.svc = supervisor.NewService(opts)
	return r, nil
}

// awaitGeneration holds the next start until the head has started a generation this rank has
// not run yet.
func (r *rank) awaitGeneration(ctx context.Context) error {
	a := r.a
	for {
		gen, err := jobfiles.ReadEngineGeneration(a.stateDir)
		if err != nil {
			a.log.Warn("cannot read the engine's generation", "error", err)
		}
		r.mu.Lock()
		newer := gen > r.started
		if newer {
			r.started = gen
		}
		r.mu.Unlock()
		if newer {
			a.log.Info("starting this node's rank of the engine", "generation", gen)
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-a.deps.Clock.After(generationPollInterval):
		}
	}
}

// onEvent mirrors the rank's life into the metrics and, when the rank ended by itself, tells
// the head, which restarts the group.
func (r *rank) onEvent(e supervisor.Event) {
	a := r.a
	a.state.SetReady(e.State == supervisor.StateRunning, "engine rank "+string(e.State), time.Now())
	r.mu.Lock()
	r.running = 0
	if e.State == supervisor.StateRunning {
		r.running = r.started
	}
	gen := r.started
	r.mu.Unlock()
	if e.State == supervisor.StateBackoff && e.Cause == supervisor.ReasonExited {
		reason := e.Reason
		if said := r.out.FirstError(); said != "" {
			reason += "; the engine said: " + said
		}
		if err := a.node.EngineEnd(gen, reason); err != nil {
			a.log.Warn("cannot tell the head that this rank ended", "error", err)
		}
	}
}

// follow restarts the running rank when the head has started a newer generation: the group
// restarts together. A rank that is not running starts the newest generation by itself.
func (r *rank) follow(ctx context.Context) {
	a := r.a
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.deps.Clock.After(generationPollInterval):
		}
		r.mu.Lock()
		if r.running > 0 {
			if gen, err := jobfiles.ReadEngineGeneration(a.stateDir); err == nil && gen > r.running {
				r.svc.Restart("group", fmt.Sprintf("the head started generation %d of the engine", gen))
			}
		}
		r.mu.Unlock()
	}
}
