package agent

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/layout"
	"github.com/llm-agent/llm-agent/agent/lifecycle"
	"github.com/llm-agent/llm-agent/agent/node"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/supervisor"
	"github.com/llm-agent/llm-agent/vllm"
)

// runWorker joins the head's Ray cluster and keeps this node's Ray running until ctx ends; with
// --launcher mp it runs this node's rank of the engine instead.
func (a *agent) runWorker(ctx context.Context) error {
	rv, stopped, err := a.awaitRendezvous(ctx)
	if err != nil || stopped {
		return err
	}
	ports, replicaPorts, err := a.workerPorts(rv)
	if err != nil {
		return err
	}
	if a.prepares() {
		if err := a.prepareWorkerModel(ctx, len(replicaPorts) > 0); err != nil {
			if ctx.Err() != nil {
				a.log.Info("stopped while preparing the model")
				return nil
			}
			return err
		}
	}
	failure := lifecycle.Run(ctx, a.workerStages(lifecycle.Life(ctx), rv, ports, replicaPorts), a.workerDrain)
	if failure == nil {
		a.log.Info("stopped")
	}
	return failure
}

// awaitRendezvous waits for the head's rendezvous and takes the replicas it chose; stopped
// tells that ctx ended first.
func (a *agent) awaitRendezvous(ctx context.Context) (rv jobfiles.Rendezvous, stopped bool, err error) {
	want := a.rendezvousID()
	a.log.Info("waiting for the head's rendezvous", "dir", a.stateDir, "timeout", a.cfg.RendezvousTimeout)
	rv, err = jobfiles.WaitRendezvous(ctx, a.deps.Clock, a.stateDir, want, a.cfg.RendezvousTimeout, rendezvousPollInterval)
	if err != nil {
		if ctx.Err() != nil {
			a.log.Info("stopped while waiting for the rendezvous")
			return rv, true, nil
		}
		return rv, false, err
	}
	mp, replica := rv.Launcher == config.LauncherMP, rv.Replicas > 1
	if replica {
		a.replicas = layout.Replicas{Count: rv.Replicas, PerNode: rv.PerNode}
		if err := a.findExecutables(); err != nil { // the head may have chosen replicas itself
			return rv, false, err
		}
	}
	if !mp && !replica {
		if _, err := ReadRayToken(a.stateDir); err != nil {
			return rv, false, err
		}
	}
	return rv, false, nil
}

// workerPorts picks this node's ports, and those of its replica gateways when it runs any.
func (a *agent) workerPorts(rv jobfiles.Rendezvous) (jobfiles.Ports, []int, error) {
	ports, moved, err := node.PickWorkerPorts(a.cfg, a.alloc.JobID, rv.Ports, a.deps.Ports)
	if err != nil {
		return ports, nil, err
	}
	var replicaPorts []int
	if rv.Replicas > 1 && a.alloc.NodeID*a.perNode() < rv.Replicas {
		// The node's first replica gateway takes the API port the head would use, on this
		// node; the others, free ones.
		if replicaPorts, err = node.PickReplicaPorts(a.cfg, a.alloc.JobID, a.deps.Ports, a.perNode(), false); err != nil {
			return ports, nil, err
		}
	}
	for _, m := range moved {
		a.log.Warn("port busy on this node, using another", "move", m)
	}
	return ports, replicaPorts, nil
}

// workerStages are this worker's stages: the metrics, then its replicas, its Ray, its rank of
// the engine, or nothing but its report.
func (a *agent) workerStages(run context.Context, rv jobfiles.Rendezvous, ports jobfiles.Ports, replicaPorts []int) []lifecycle.Stage {
	extra := served{}
	if len(replicaPorts) > 0 {
		// The replicas' engines' own metrics, passed through as on the head.
		extra.routes = map[string]http.Handler{}
		for slot := range replicaPorts {
			a.engineMetricsRoute(extra.routes, slot, vllm.Endpoint{Socket: filepath.Join(a.localDir, socketName(slot))})
		}
	}
	stages := []lifecycle.Stage{a.metricsStage(run, ports.Metrics, extra)}
	switch {
	case len(replicaPorts) > 0:
		for slot, port := range replicaPorts {
			stages = append(stages, a.replicaStage(run, rv, port, slot))
		}
		return append(stages, a.workerFilesStage(ports, replicaPorts))
	case rv.Replicas > 1:
		return append(stages, a.workerFilesStage(ports, nil), idleStage(a))
	case rv.Launcher != config.LauncherMP:
		return append(stages, a.workerFilesStage(ports, nil), a.workerRayStage(run, ports, rv.RayAddress()))
	case a.alloc.NodeID < rv.Pipeline:
		return append(stages, a.workerFilesStage(ports, nil), a.workerRankStage(run, rv))
	default:
		// The engine's pipeline ends before this node: with no Ray, it only reports.
		return append(stages, a.workerFilesStage(ports, nil), idleStage(a))
	}
}

// workerDrain marks a requested stop in the node file before the stages stop.
func (a *agent) workerDrain(failure error) error {
	if failure == nil {
		a.log.Info("draining")
		// Said before the metrics port closes, so that the head does not take this node's
		// silence for a killed agent.
		if err := a.node.End(""); err != nil {
			a.log.Warn("cannot publish the stop", "error", err)
		}
	}
	a.state.SetReady(false, "stopping", time.Now())
	return failure
}

// workerFilesStage publishes the worker's node file, with its replica gateways' ports if any.
func (a *agent) workerFilesStage(ports jobfiles.Ports, replicaPorts []int) lifecycle.Stage {
	return lifecycle.Stage{Name: "files", Start: func(context.Context) (<-chan error, error) {
		if len(replicaPorts) == 0 {
			a.state.SetReady(false, "starting", time.Now())
		}
		return nil, a.node.Publish(jobfiles.NodeInfo{Host: a.alloc.Hostname(), Address: a.addr, Role: "worker",
			MetricsPort: ports.Metrics, GPUs: a.alloc.GPUs, PID: os.Getpid(), ReplicaPorts: replicaPorts})
	}}
}

// idleStage is a node the engine does not use: with no Ray, it only reports.
func idleStage(a *agent) lifecycle.Stage {
	return lifecycle.Stage{Name: "idle", Start: func(context.Context) (<-chan error, error) {
		a.state.SetReady(true, "", time.Now())
		return nil, nil
	}}
}

// workerRayStage joins the head's Ray cluster at gcs and keeps this node's Ray running.
func (a *agent) workerRayStage(run context.Context, ports jobfiles.Ports, gcs string) lifecycle.Stage {
	var stop func()
	return lifecycle.Stage{Name: "ray", Start: func(context.Context) (<-chan error, error) {
		svc, closeOut, err := a.rayService(a.rayStartOptions(ports, gcs), nil, func(e supervisor.Event) {
			a.trackChild(e)
			a.state.SetReady(e.State == supervisor.StateRunning, "ray "+string(e.State), time.Now())
		})
		if err != nil {
			return nil, err
		}
		a.log.Info("joining ray", "gcs", gcs, "address", a.addr, "iface", a.ifname)
		ctx, cancel := context.WithCancel(run)
		errc := make(chan error, 1)
		go func() {
			defer closeOut()
			errc <- svc.Run(ctx)
		}()
		done, finished := lifecycle.Ended(errc, func(err error) error { return fmt.Errorf("ray on %s: %w", a.alloc.Hostname(), err) })
		stop = func() { cancel(); <-finished }
		return done, nil
	}, Stop: func() { stop() }}
}
