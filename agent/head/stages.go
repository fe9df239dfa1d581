package head

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"

	"github.com/llm-agent/llm-agent/agent/engine"
	"github.com/llm-agent/llm-agent/agent/lifecycle"
	"github.com/llm-agent/llm-agent/agent/metrics"
	"github.com/llm-agent/llm-agent/agent/modelprep"
	"github.com/llm-agent/llm-agent/agent/node"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/supervisor"
	"github.com/llm-agent/llm-agent/vllm"
)

// The head's stages, in the order Run starts them: each returns what it keeps running to
// the stage runner, which stops them in reverse order.

// metricsServed is what the head's metrics port serves beside the agent's own metrics: the
// gateway's metrics, and the engine's own /metrics passed through on a path of its own, which
// Prometheus scrapes as a separate target (targets.json lists it).
func (h *head) metricsServed() node.Served {
	s := node.Served{Routes: map[string]http.Handler{}, Collectors: h.front.Collectors()}
	if h.service != nil {
		s.Collectors = append(s.Collectors, h.service.Collector(h.env.Alloc.Hostname(), h.env.Alloc.JobID))
	}
	engine.MetricsRoute(h.env, s.Routes, 0, h.engineEndpoint())
	for slot := 1; slot < len(h.slotPorts); slot++ {
		engine.MetricsRoute(h.env, s.Routes, slot, vllm.Endpoint{Socket: h.env.SocketPath(slot)})
	}
	return s
}

// filesStage publishes the head's node file and the connection file.
func (h *head) filesStage() lifecycle.Stage {
	return lifecycle.Stage{Name: "files", Start: func(context.Context) (<-chan error, error) {
		e := h.env
		// The last launch's reports on the model's preparation go before any worker can read
		// this launch's rendezvous.
		if err := modelprep.Reset(e.StateDir); err != nil {
			return nil, err
		}
		if err := e.File.Publish(jobfiles.NodeInfo{Host: e.Alloc.Hostname(), Address: e.Addr, Role: "head",
			MetricsPort: h.ports.Metrics, GPUs: e.Alloc.GPUs, PID: os.Getpid(), ReplicaPorts: h.slotPorts}); err != nil {
			return nil, err
		}
		if h.front.OwnerKey != "" {
			if err := jobfiles.WriteFileAtomic(filepath.Join(e.StateDir, jobfiles.OwnerKeyFile), []byte(h.front.OwnerKey+"\n"), 0o600); err != nil {
				return nil, err
			}
		}
		var err error
		if h.conn, err = jobfiles.NewConnectionWriter(e.StateDir, h.initialConnection(), h.front.APIKey); err != nil {
			return nil, err
		}
		if h.service != nil {
			h.conn.Watch(h.service.Mirror)
		}
		e.Log.Info("head starting", "address", e.Addr, "iface", e.Ifname, "api_port", h.ports.API,
			"metrics_port", h.ports.Metrics, "tensor_parallel", e.Par.Tensor, "pipeline_parallel", e.Par.Pipeline,
			"state_dir", e.StateDir)
		return nil, nil
	}}
}

// modelStage prepares the model before the engine starts: the head's own part, then every
// node's word (agent/modelprep).
func (h *head) modelStage() lifecycle.Stage {
	return lifecycle.Stage{Name: "model", Start: func(ctx context.Context) (<-chan error, error) {
		if !modelprep.Prepares(h.env) {
			return nil, nil
		}
		_ = h.conn.SetState(jobfiles.StateStarting, "preparing the model: verifying or staging its files")
		if err := modelprep.Node(ctx, h.env, h.prepProgress); err != nil {
			modelprep.Fail(h.env, err)
			return nil, err
		}
		return nil, modelprep.Decide(ctx, h.env)
	}}
}

// prepProgress shows the head's preparation of the model in the connection file.
func (h *head) prepProgress(p metrics.Prep, phase string) {
	mp := &jobfiles.ModelPrep{Phase: phase, BytesDone: p.Bytes, BytesTotal: p.Total, Seconds: p.Seconds}
	if p.Seconds > 0 {
		mp.BytesPerSecond = float64(p.Bytes) / p.Seconds
	}
	_ = h.conn.Update(func(c *jobfiles.Connection) { c.ModelPrep = mp })
}

// watchStage runs a watcher until the stage stops.
func (h *head) watchStage(run context.Context, name string, watch func(ctx context.Context)) lifecycle.Stage {
	var stop func()
	return lifecycle.Stage{Name: name, Start: func(context.Context) (<-chan error, error) {
		stop = lifecycle.Background(run, watch)
		return nil, nil
	}, Stop: func() { stop() }}
}

// clusterStage brings up what the engine spans the nodes with: a Ray cluster, or, with
// --launcher mp, only the rendezvous that the workers' ranks read.
func (h *head) clusterStage(run context.Context) lifecycle.Stage {
	if h.env.Replicated() {
		return lifecycle.Stage{Name: "rendezvous", Start: func(context.Context) (<-chan error, error) { return nil, h.publishReplicas() }}
	}
	if h.env.RanksOnNodes() {
		return lifecycle.Stage{Name: "rendezvous", Start: func(context.Context) (<-chan error, error) { return nil, h.ranks.Publish(h.rendezvous()) }}
	}
	return h.rayStage(run)
}

// rayStage starts the Ray head in a job of several nodes, and its watcher once it is up.
func (h *head) rayStage(run context.Context) lifecycle.Stage {
	var stop func()
	return lifecycle.Stage{Name: "ray", Start: func(ctx context.Context) (<-chan error, error) {
		if !h.env.UsesRay() {
			stop = func() {}
			return nil, nil
		}
		rctx, cancel := context.WithCancel(run)
		errc, err := h.startRay(ctx, rctx, cancel)
		if err != nil {
			cancel()
			return nil, err
		}
		done, finished := lifecycle.Ended(errc, func(err error) error { return fmt.Errorf("ray head: %w", err) })
		stopMonitor := lifecycle.Background(run, h.monitorRay)
		stop = func() {
			stopMonitor()
			cancel()
			<-finished
		}
		return done, nil
	}, Stop: func() { stop() }}
}

// engineStage starts the supervised `vllm serve` and the watcher of its life.
func (h *head) engineStage(run context.Context) lifecycle.Stage {
	var stop func()
	return lifecycle.Stage{Name: "engine", Start: func(context.Context) (<-chan error, error) {
		events := make(chan supervisor.Event, 64)
		var closeOut func()
		var err error
		if h.engine, closeOut, err = h.engineService(events); err != nil {
			return nil, err
		}
		stopMonitor := lifecycle.Background(run, func(ctx context.Context) { h.monitorEngine(ctx, events) })
		if h.ranks.Active() {
			stopRanks := lifecycle.Background(run, func(ctx context.Context) { h.ranks.Watch(ctx, h.engine) })
			prev := stopMonitor
			stopMonitor = func() { stopRanks(); prev() }
		}
		ctx, cancel := context.WithCancel(run)
		errc := make(chan error, 1)
		go func() { errc <- h.engine.Run(ctx) }()
		done, finished := lifecycle.Ended(errc, func(err error) error {
			return fmt.Errorf("engine: %w%s", err, h.engineSaid())
		})
		stop = func() {
			cancel()
			<-finished
			stopMonitor()
			closeOut()
		}
		return done, nil
	}, Stop: func() { stop() }}
}
