// Package head is the head node's run: its stages in order (metrics, gateway, files, the
// nodes' watch, the cluster the engine spans, the model's preparation, the engine, the
// replicas' watch, the service, the drain), stopped in reverse; the connection file it keeps
// true; and, on a stop signal, the worker whose end made Slurm stop the step.
package head

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llm-agent/llm-agent/agent/engine"
	"github.com/llm-agent/llm-agent/agent/front"
	"github.com/llm-agent/llm-agent/agent/internal/linelog"
	"github.com/llm-agent/llm-agent/agent/lifecycle"
	"github.com/llm-agent/llm-agent/agent/node"
	"github.com/llm-agent/llm-agent/agent/ranks"
	"github.com/llm-agent/llm-agent/agent/raycluster"
	"github.com/llm-agent/llm-agent/agent/replica"
	"github.com/llm-agent/llm-agent/agent/service"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/ray"
	"github.com/llm-agent/llm-agent/supervisor"
)

// Options are what the head needs beyond its node's environment: a service's scheduler (to
// queue its successor), the agent's own options (which the successor's batch script gets
// again), and the service's timings (zero fields are the defaults).
type Options struct {
	Scheduler service.Scheduler
	Args      []string
	Timings   service.Timings
}

// head is the head node's run: Ray head, engine, probes and the connection file.
type head struct {
	env   *node.Env
	opts  Options
	ports jobfiles.Ports
	// slotPorts are the ports of the head's own replica gateways when each node runs several
	// replicas (the first, 0, is the head's own engine behind its gateway).
	slotPorts []int
	front     *front.Front
	conn      *jobfiles.ConnectionWriter
	engine    *supervisor.Service
	// answering takes the head's own engine out of the rotation while it does not answer,
	// in a job with replicas.
	answering engine.Answering
	rayc      ray.Client
	ray       *raycluster.Cluster // the cluster as the GCS shows it, once Ray is up
	// ranks is the group of the engine's ranks, with --launcher mp.
	ranks *ranks.Group
	// engineOut is the engine's output, which keeps its first error line to explain an exit.
	engineOut *linelog.Logger

	// service is the job's service, with --service.
	service *service.Service
	// replicaKey opens the workers' replica gateways to this one, with --replicas.
	replicaKey string
	// rotation is what the gateway routes to besides its own engine: the job's other replicas
	// and the service's added jobs.
	rotation rotation
	// stopReason says why the head stops by itself (a handover, the service's end).
	stopReason atomic.Pointer[string]
	draining   atomic.Bool

	mu        sync.Mutex
	addresses []string // node addresses by host index, from the node files
}

// Run is the head's run: its stages in order, from the metrics port to the drain, until ctx
// ends (a clean drain, nil) or the service fails.
func Run(ctx context.Context, e *node.Env, opts Options) error {
	h := &head{env: e, opts: opts}
	var err error
	var moved []string
	if h.ports, moved, err = node.PickHeadPorts(e.Cfg, e.Alloc.JobID, e.Ports); err != nil {
		return err
	}
	for _, m := range moved {
		e.Log.Warn("preferred port busy, using another", "move", m)
	}
	h.ranks = ranks.NewGroup(e, h.ports)
	if err := h.joinService(ctx); err != nil {
		return err
	}
	if h.front, err = front.New(e, h.keys()); err != nil {
		return err
	}
	if h.scales() {
		h.service.SetPool(h)
	}
	if e.PerNode() > 1 {
		// The head's further replicas, each behind a gateway of its own as on the workers.
		if h.slotPorts, err = node.PickReplicaPorts(e.Cfg, e.Alloc.JobID, e.Ports, e.PerNode(), true, h.ports.API, h.ports.Metrics); err != nil {
			return err
		}
	}
	failure := lifecycle.Run(ctx, h.stages(lifecycle.Life(ctx)), h.beginDrain)
	return h.finish(failure)
}

// stages are the head's, in the order they start.
func (h *head) stages(run context.Context) []lifecycle.Stage {
	e := h.env
	stages := []lifecycle.Stage{
		e.MetricsStage(run, h.ports.Metrics, h.metricsServed()),
		h.front.Stage(run, front.Options{Port: h.ports.API, Engine: h.engineEndpoint(), Ready: h.answering.Ready(e.State.Ready),
			OnAdapter: h.adapterChanged, ServiceDir: h.serviceDir()}),
		h.filesStage(),
		h.watchStage(run, "state files", h.retryFiles),
		h.watchStage(run, "node files", h.watchNodes),
		h.clusterStage(run),
		h.modelStage(),
		h.engineStage(run),
	}
	if e.Replicated() {
		for slot := 1; slot < e.PerNode(); slot++ {
			rv := jobfiles.Rendezvous{Tensor: e.Par.Tensor}
			stages = append(stages, replica.Stage(run, e, rv, h.slotPorts[slot], slot))
		}
		stages = append(stages, h.watchStage(run, "replicas", h.watchReplicas))
	}
	if h.scales() {
		stages = append(stages, h.watchStage(run, "added jobs", h.watchExtras))
	}
	return append(stages, h.serviceStage(run), h.front.DrainStage(run))
}

// beginDrain marks the service as stopping, or failing, before the stages stop. A stop signal
// may come from Slurm ending the step because a worker's agent ended: the worker's reason, or
// its silence, is then the failure.
func (h *head) beginDrain(failure error) error {
	e := h.env
	h.draining.Store(true)
	if failure == nil && h.conn != nil && e.MultiNode() {
		failure = h.workerFailure()
	}
	if failure == nil && h.conn != nil {
		e.Log.Info("draining: engine first, then ray", "budget", e.Cfg.Grace, "why", h.why())
		_ = h.conn.SetState(jobfiles.StateStopping, h.why())
	}
	e.State.SetReady(false, "stopping", time.Now())
	return failure
}

// finish marks the service stopped or failed and removes the Prometheus targets of the job. A
// failure before the connection file exists is only returned.
func (h *head) finish(failure error) error {
	if h.conn == nil {
		return failure
	}
	h.removeTargets()
	if failure != nil {
		h.env.Log.Error("failed", "reason", failure)
		_ = h.conn.SetState(jobfiles.StateFailed, failure.Error())
		h.endService("failed: " + failure.Error())
		return failure
	}
	_ = h.conn.SetState(jobfiles.StateStopped, h.ownReason())
	h.endService(h.why())
	h.env.Log.Info("stopped", "why", h.why())
	h.endJob()
	return nil
}

// endJob ends the whole job when the head stopped by itself (a handover, the service's end, its
// sleep) in a job of several nodes: the workers' agents, which would serve nothing, drain on
// Slurm's signal and the allocation is freed. A one-node job ends with its head.
func (h *head) endJob() {
	e := h.env
	if h.ownReason() == "" || !e.MultiNode() || e.Alloc.Local || h.opts.Scheduler == nil {
		return
	}
	e.Log.Info("ending the job's other nodes", "job", e.Alloc.JobID)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := h.opts.Scheduler.Cancel(ctx, e.Alloc.JobID); err != nil {
		e.Log.Warn("cannot end the job's other nodes; they end at the time limit", "job", e.Alloc.JobID, "error", err)
	}
}

// ownReason says why the head stops by itself; "" when it was asked to.
func (h *head) ownReason() string {
	if r := h.stopReason.Load(); r != nil {
		return *r
	}
	return ""
}

// why says why the head stops: its own reason, or a stop signal.
func (h *head) why() string {
	if r := h.ownReason(); r != "" {
		return r
	}
	return "received a stop signal"
}

// endService writes the job's end into its service's file.
func (h *head) endService(why string) {
	if h.service != nil {
		h.service.End(h.conn.Snapshot(), why)
	}
}
