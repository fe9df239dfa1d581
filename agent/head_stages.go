package agent

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"

	"github.com/llm-agent/llm-agent/agent/lifecycle"
	"github.com/llm-agent/llm-agent/agent/metrics"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/supervisor"
	"github.com/llm-agent/llm-agent/vllm"
)

// The head's stages, in the order runHead starts them: each returns what it keeps running to
// the stage runner, which stops them in reverse order.

// metricsServed is what the head's metrics port serves beside the agent's own metrics: the
// gateway's metrics, and the engine's own /metrics passed through on a path of its own, which
// Prometheus scrapes as a separate target (targets.json lists it).
func (h *head) metricsServed() served {
	s := served{routes: map[string]http.Handler{}}
	h.engineMetricsRoute(s.routes, 0, h.engineEndpoint())
	for slot := 1; slot < len(h.slotPorts); slot++ {
		h.engineMetricsRoute(s.routes, slot, vllm.Endpoint{Socket: filepath.Join(h.localDir, socketName(slot))})
	}
	if h.front.metrics != nil {
		s.collectors = append(s.collectors, h.front.metrics)
	}
	if h.front.replicas != nil {
		s.collectors = append(s.collectors, h.front.replicas)
	}
	return s
}

// engineMetricsRoute serves the engine of a slot's own /metrics on its path of the node's
// metrics port (targets.json lists each).
func (a *agent) engineMetricsRoute(routes map[string]http.Handler, slot int, eng vllm.Endpoint) {
	routes["GET "+jobfiles.EngineMetricsPathOf(vllm.EngineMetricsPath, slot)] = vllm.MetricsHandler(
		eng.BaseURL()+"/metrics", eng.Transport(1), engineScrapeTimeout, a.log.Named("engine-metrics"))
}

// gatewayStage binds the public port; it closes the port and writes out the audit log last.
func (h *head) gatewayStage(run context.Context) lifecycle.Stage {
	return lifecycle.Stage{Name: "gateway", Start: func(context.Context) (<-chan error, error) {
		errc, err := h.startGateway(run)
		if err != nil || errc == nil {
			return nil, err
		}
		done, _ := lifecycle.Ended(errc, func(err error) error { return fmt.Errorf("gateway: %w", err) })
		return done, nil
	}, Stop: func() { h.stopGateway(run) }}
}

// filesStage publishes the head's node file and the connection file.
func (h *head) filesStage() lifecycle.Stage {
	return lifecycle.Stage{Name: "files", Start: func(context.Context) (<-chan error, error) {
		a := h.agent
		// The last launch's reports on the model's preparation go before any worker can read
		// this launch's rendezvous.
		if err := os.RemoveAll(filepath.Join(a.stateDir, prepDirName)); err != nil {
			return nil, err
		}
		if err := a.node.Publish(jobfiles.NodeInfo{Host: a.alloc.Hostname(), Address: a.addr, Role: "head",
			MetricsPort: h.ports.Metrics, GPUs: a.alloc.GPUs, PID: os.Getpid(), ReplicaPorts: h.slotPorts}); err != nil {
			return nil, err
		}
		if h.ownerKey != "" {
			if err := jobfiles.WriteFileAtomic(filepath.Join(a.stateDir, jobfiles.OwnerKeyFile), []byte(h.ownerKey+"\n"), 0o600); err != nil {
				return nil, err
			}
		}
		var err error
		if h.conn, err = jobfiles.NewConnectionWriter(a.stateDir, h.initialConnection(), h.apiKey); err != nil {
			return nil, err
		}
		if h.service != nil {
			h.conn.Watch(h.service.Mirror)
		}
		a.log.Info("head starting", "address", a.addr, "iface", a.ifname, "api_port", h.ports.API,
			"metrics_port", h.ports.Metrics, "tensor_parallel", a.par.Tensor, "pipeline_parallel", a.par.Pipeline,
			"state_dir", a.stateDir)
		return nil, nil
	}}
}

// modelStage prepares the model before the engine starts: the head's own part, then every
// node's word (modelprep.go).
func (h *head) modelStage() lifecycle.Stage {
	return lifecycle.Stage{Name: "model", Start: func(ctx context.Context) (<-chan error, error) {
		if !h.prepares() {
			return nil, nil
		}
		_ = h.conn.SetState(jobfiles.StateStarting, "preparing the model: verifying or staging its files")
		if err := h.prepareModel(ctx, h.prepProgress); err != nil {
			_ = jobfiles.WriteJSONAtomic(h.prepPath("verdict"), prepVerdict{Reason: err.Error()}, 0o600)
			return nil, err
		}
		return nil, h.awaitPreparation(ctx)
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
	if h.replicated() {
		return lifecycle.Stage{Name: "rendezvous", Start: func(context.Context) (<-chan error, error) { return nil, h.publishReplicas() }}
	}
	if h.ranksOnNodes() {
		return lifecycle.Stage{Name: "rendezvous", Start: func(context.Context) (<-chan error, error) { return nil, h.publishLayout() }}
	}
	return h.rayStage(run)
}

// rayStage starts the Ray head in a job of several nodes, and its watcher once it is up.
func (h *head) rayStage(run context.Context) lifecycle.Stage {
	var stop func()
	return lifecycle.Stage{Name: "ray", Start: func(ctx context.Context) (<-chan error, error) {
		if !h.usesRay() {
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
		if h.engineRanks() {
			stopRanks := lifecycle.Background(run, h.watchRanks)
			prev := stopMonitor
			stopMonitor = func() { stopRanks(); prev() }
		}
		ctx, cancel := context.WithCancel(run)
		errc := make(chan error, 1)
		go func() { errc <- h.engine.Run(ctx) }()
		done, finished := lifecycle.Ended(errc, func(err error) error {
			err = fmt.Errorf("engine: %w", err)
			if said := h.engineOut.FirstError(); said != "" {
				err = fmt.Errorf("%w; the engine said: %s", err, said)
			}
			return err
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

// drainStage, last to start and first to stop, lets the requests in flight finish before the
// engine stops.
func (h *head) drainStage(run context.Context) lifecycle.Stage {
	return lifecycle.Stage{Name: "drain", Start: func(context.Context) (<-chan error, error) { return nil, nil },
		Stop: func() { h.drainGateway(run, h.cfg.Grace/4) }}
}
