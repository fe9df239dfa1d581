// Package worker is a worker node's run: it waits for the head's rendezvous, then joins the
// head's Ray cluster, runs its rank of the engine (--launcher mp), its replicas (--replicas),
// or only reports, until the run ends; it marks a requested stop in its node file before its
// stages stop, so that the head does not take its silence for a killed agent.
package worker

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/engine"
	"github.com/llm-agent/llm-agent/agent/layout"
	"github.com/llm-agent/llm-agent/agent/lifecycle"
	"github.com/llm-agent/llm-agent/agent/modelprep"
	"github.com/llm-agent/llm-agent/agent/node"
	"github.com/llm-agent/llm-agent/agent/ranks"
	"github.com/llm-agent/llm-agent/agent/replica"
	"github.com/llm-agent/llm-agent/agent/secrets"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/supervisor"
	"github.com/llm-agent/llm-agent/vllm"
)

// rendezvousPollInterval is how often a worker looks for the rendezvous file.
const rendezvousPollInterval = 200 * time.Millisecond

// Run joins the head's Ray cluster and keeps this node's Ray running until ctx ends; with
// --launcher mp it runs this node's rank of the engine instead.
func Run(ctx context.Context, e *node.Env) error {
	rv, stopped, err := awaitRendezvous(ctx, e)
	if err != nil || stopped {
		return err
	}
	ports, replicaPorts, err := pickPorts(e, rv)
	if err != nil {
		return err
	}
	if modelprep.Prepares(e) {
		if err := modelprep.Worker(ctx, e, len(replicaPorts) > 0); err != nil {
			if ctx.Err() != nil {
				e.Log.Info("stopped while preparing the model")
				return nil
			}
			return err
		}
	}
	failure := lifecycle.Run(ctx, stages(lifecycle.Life(ctx), e, rv, ports, replicaPorts), drain(e))
	if failure == nil {
		e.Log.Info("stopped")
	}
	return failure
}

// awaitRendezvous waits for the head's rendezvous and takes the replicas it chose; stopped
// tells that ctx ended first.
func awaitRendezvous(ctx context.Context, e *node.Env) (rv jobfiles.Rendezvous, stopped bool, err error) {
	want := e.RendezvousID()
	e.Log.Info("waiting for the head's rendezvous", "dir", e.StateDir, "timeout", e.Cfg.RendezvousTimeout)
	rv, err = jobfiles.WaitRendezvous(ctx, e.Clock, e.StateDir, want, e.Cfg.RendezvousTimeout, rendezvousPollInterval)
	if err != nil {
		if ctx.Err() != nil {
			e.Log.Info("stopped while waiting for the rendezvous")
			return rv, true, nil
		}
		return rv, false, err
	}
	mp, replica := rv.Launcher == config.LauncherMP, rv.Replicas > 1
	if replica {
		e.Replicas = layout.Replicas{Count: rv.Replicas, PerNode: rv.PerNode}
		if err := e.FindExecutables(); err != nil { // the head may have chosen replicas itself
			return rv, false, err
		}
	}
	if !mp && !replica {
		if _, err := secrets.ReadRayToken(e.StateDir); err != nil {
			return rv, false, err
		}
	}
	return rv, false, nil
}

// pickPorts picks this node's ports, and those of its replica gateways when it runs any.
func pickPorts(e *node.Env, rv jobfiles.Rendezvous) (jobfiles.Ports, []int, error) {
	ports, moved, err := node.PickWorkerPorts(e.Cfg, e.Alloc.JobID, rv.Ports, e.Ports)
	if err != nil {
		return ports, nil, err
	}
	var replicaPorts []int
	if rv.Replicas > 1 && e.Alloc.NodeID*e.PerNode() < rv.Replicas {
		// The node's first replica gateway takes the API port the head would use, on this
		// node; the others, free ones.
		if replicaPorts, err = node.PickReplicaPorts(e.Cfg, e.Alloc.JobID, e.Ports, e.PerNode(), false); err != nil {
			return ports, nil, err
		}
	}
	for _, m := range moved {
		e.Log.Warn("port busy on this node, using another", "move", m)
	}
	return ports, replicaPorts, nil
}

// stages are this worker's stages: the metrics, then its replicas, its Ray, its rank of
// the engine, or nothing but its report.
func stages(run context.Context, e *node.Env, rv jobfiles.Rendezvous, ports jobfiles.Ports, replicaPorts []int) []lifecycle.Stage {
	extra := node.Served{}
	if len(replicaPorts) > 0 {
		// The replicas' engines' own metrics, passed through as on the head.
		extra.Routes = map[string]http.Handler{}
		for slot := range replicaPorts {
			engine.MetricsRoute(e, extra.Routes, slot, vllm.Endpoint{Socket: e.SocketPath(slot)})
		}
	}
	stages := []lifecycle.Stage{e.MetricsStage(run, ports.Metrics, extra)}
	switch {
	case len(replicaPorts) > 0:
		for slot, port := range replicaPorts {
			stages = append(stages, replica.Stage(run, e, rv, port, slot))
		}
		return append(stages, filesStage(e, ports, replicaPorts))
	case rv.Replicas > 1:
		return append(stages, filesStage(e, ports, nil), idleStage(e))
	case rv.Launcher != config.LauncherMP:
		return append(stages, filesStage(e, ports, nil), rayStage(run, e, ports, rv.RayAddress()))
	case e.Alloc.NodeID < rv.Pipeline:
		return append(stages, filesStage(e, ports, nil), ranks.Stage(run, e, rv))
	default:
		// The engine's pipeline ends before this node: with no Ray, it only reports.
		return append(stages, filesStage(e, ports, nil), idleStage(e))
	}
}

// drain marks a requested stop in the node file before the stages stop.
func drain(e *node.Env) func(failure error) error {
	return func(failure error) error {
		if failure == nil {
			e.Log.Info("draining")
			// Said before the metrics port closes, so that the head does not take this node's
			// silence for a killed agent.
			if err := e.File.End(""); err != nil {
				e.Log.Warn("cannot publish the stop", "error", err)
			}
		}
		e.State.SetReady(false, "stopping", time.Now())
		return failure
	}
}

// filesStage publishes the worker's node file, with its replica gateways' ports if any.
func filesStage(e *node.Env, ports jobfiles.Ports, replicaPorts []int) lifecycle.Stage {
	return lifecycle.Stage{Name: "files", Start: func(context.Context) (<-chan error, error) {
		if len(replicaPorts) == 0 {
			e.State.SetReady(false, "starting", time.Now())
		}
		return nil, e.File.Publish(jobfiles.NodeInfo{Host: e.Alloc.Hostname(), Address: e.Addr, Role: "worker",
			MetricsPort: ports.Metrics, GPUs: e.Alloc.GPUs, PID: os.Getpid(), ReplicaPorts: replicaPorts})
	}}
}

// idleStage is a node the engine does not use: with no Ray, it only reports.
func idleStage(e *node.Env) lifecycle.Stage {
	return lifecycle.Stage{Name: "idle", Start: func(context.Context) (<-chan error, error) {
		e.State.SetReady(true, "", time.Now())
		return nil, nil
	}}
}

// rayStage joins the head's Ray cluster at gcs and keeps this node's Ray running.
func rayStage(run context.Context, e *node.Env, ports jobfiles.Ports, gcs string) lifecycle.Stage {
	var stop func()
	return lifecycle.Stage{Name: "ray", Start: func(context.Context) (<-chan error, error) {
		svc, closeOut, err := e.RayService(ports, gcs, nil, func(ev supervisor.Event) {
			e.TrackChild(ev)
			e.State.SetReady(ev.State == supervisor.StateRunning, "ray "+string(ev.State), time.Now())
		})
		if err != nil {
			return nil, err
		}
		e.Log.Info("joining ray", "gcs", gcs, "address", e.Addr, "iface", e.Ifname)
		ctx, cancel := context.WithCancel(run)
		errc := make(chan error, 1)
		go func() {
			defer closeOut()
			errc <- svc.Run(ctx)
		}()
		done, finished := lifecycle.Ended(errc, func(err error) error { return fmt.Errorf("ray on %s: %w", e.Alloc.Hostname(), err) })
		stop = func() { cancel(); <-finished }
		return done, nil
	}, Stop: func() { stop() }}
}
