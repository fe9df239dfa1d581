package ranks

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/llm-agent/llm-agent/agent/engine"
	"github.com/llm-agent/llm-agent/agent/internal/linelog"
	"github.com/llm-agent/llm-agent/agent/lifecycle"
	"github.com/llm-agent/llm-agent/agent/node"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/ray"
	"github.com/llm-agent/llm-agent/supervisor"
	"github.com/llm-agent/llm-agent/vllm"
)

// Stage runs this worker's rank of the engine, generation after generation, until the run
// ends; rv is the head's rendezvous.
func Stage(run context.Context, e *node.Env, rv jobfiles.Rendezvous) lifecycle.Stage {
	var stop func()
	return lifecycle.Stage{Name: "engine rank", Start: func(context.Context) (<-chan error, error) {
		r, err := newRank(e, rv)
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
		done, finished := lifecycle.Ended(errc, func(err error) error { return fmt.Errorf("engine rank on %s: %w", e.Alloc.Hostname(), err) })
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
	env      *node.Env
	svc      *supervisor.Service
	out      *linelog.Logger
	closeOut func()

	mu sync.Mutex
	// started is the generation of the last rank started; running is that of the rank that
	// runs now, 0 while none does.
	started, running int
}

func newRank(e *node.Env, rv jobfiles.Rendezvous) (*rank, error) {
	r := &rank{env: e}
	// A headless rank serves no API: the adapters added at run time reach it through rank 0,
	// and its command line carries those of --lora, with the same --max-lora-rank.
	opts, out, closeOut, err := engine.Options(e, engine.Child{Name: "vllm",
		Spec: vllm.ServeSpec{Model: e.EngineModel(), ServedName: e.Cfg.ServedName(), Tensor: rv.Tensor, Pipeline: rv.Pipeline,
			Nodes: rv.Pipeline, NodeRank: e.Alloc.NodeID,
			MasterAddr: rv.HeadAddress, MasterPort: rv.Ports.EngineMaster, Extra: e.Cfg.VLLMArgs},
		Env:     append(ray.Env(e.Addr, e.Ifname), "VLLM_PORT="+strconv.Itoa(rv.Ports.EngineRPC)),
		OnEvent: r.onEvent})
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
	e := r.env
	for {
		gen, err := jobfiles.ReadEngineGeneration(e.StateDir)
		if err != nil {
			e.Log.Warn("cannot read the engine's generation", "error", err)
		}
		r.mu.Lock()
		newer := gen > r.started
		if newer {
			r.started = gen
		}
		r.mu.Unlock()
		if newer {
			e.Log.Info("starting this node's rank of the engine", "generation", gen)
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-e.Clock.After(generationPollInterval):
		}
	}
}

// onEvent mirrors the rank's life into the metrics and, when the rank ended by itself, tells
// the head, which restarts the group.
func (r *rank) onEvent(ev supervisor.Event) {
	e := r.env
	e.State.SetReady(ev.State == supervisor.StateRunning, "engine rank "+string(ev.State), time.Now())
	r.mu.Lock()
	r.running = 0
	if ev.State == supervisor.StateRunning {
		r.running = r.started
	}
	gen := r.started
	r.mu.Unlock()
	if ev.State == supervisor.StateBackoff && ev.Cause == supervisor.ReasonExited {
		reason := ev.Reason
		if said := r.out.FirstError(); said != "" {
			reason += "; the engine said: " + said
		}
		if err := e.File.EngineEnd(gen, reason); err != nil {
			e.Log.Warn("cannot tell the head that this rank ended", "error", err)
		}
	}
}

// follow restarts the running rank when the head has started a newer generation: the group
// restarts together. A rank that is not running starts the newest generation by itself.
func (r *rank) follow(ctx context.Context) {
	e := r.env
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.Clock.After(generationPollInterval):
		}
		r.mu.Lock()
		if r.running > 0 {
			if gen, err := jobfiles.ReadEngineGeneration(e.StateDir); err == nil && gen > r.running {
				r.svc.Restart("group", fmt.Sprintf("the head started generation %d of the engine", gen))
			}
		}
		r.mu.Unlock()
	}
}
