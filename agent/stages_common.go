package agent

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/supervisor"
)

// metricsStage serves /metrics, /healthz and /readyz on port, with extra collectors beside the
// agent's own and the GPUs'.
func (a *agent) metricsStage(run context.Context, port int, extra ...prometheus.Collector) stage {
	var stop func()
	return stage{name: "metrics", start: func(context.Context) (<-chan error, error) {
		ctx, cancel := context.WithCancel(run)
		errc, err := a.serveMetrics(ctx, port, extra...)
		if err != nil {
			cancel()
			return nil, err
		}
		done, finished := ended(errc, func(err error) error { return fmt.Errorf("metrics server: %w", err) })
		stop = func() { cancel(); <-finished }
		return done, nil
	}, stop: func() { stop() }}
}

// workerFilesStage publishes the worker's node file.
func (a *agent) workerFilesStage(ports jobfiles.Ports) stage {
	return stage{name: "files", start: func(context.Context) (<-chan error, error) {
		a.state.SetReady(false, "joining ray", time.Now())
		return nil, jobfiles.WriteNodeInfo(a.stateDir, jobfiles.NodeInfo{Host: a.alloc.Hostname(), Address: a.addr, Role: "worker",
			MetricsPort: ports.Metrics, GPUs: a.alloc.GPUs, PID: os.Getpid()})
	}}
}

// workerRayStage joins the head's Ray cluster at gcs and keeps this node's Ray running.
func (a *agent) workerRayStage(run context.Context, ports jobfiles.Ports, gcs string) stage {
	var stop func()
	return stage{name: "ray", start: func(context.Context) (<-chan error, error) {
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
		done, finished := ended(errc, func(err error) error { return fmt.Errorf("ray on %s: %w", a.alloc.Hostname(), err) })
		stop = func() { cancel(); <-finished }
		return done, nil
	}, stop: func() { stop() }}
}
