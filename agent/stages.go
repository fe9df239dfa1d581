package agent

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llm-agent/llm-agent/agent/lifecycle"
)

// Timings of the run that are not the user's settings: how often the agent looks for a
// condition it waits on, and how long one look may take.
const (
	gcsPollInterval        = 200 * time.Millisecond // the head's GCS accepting connections
	rendezvousPollInterval = 200 * time.Millisecond // a worker looking for the rendezvous file
	clusterPollInterval    = time.Second            // every node alive in Ray, before the engine starts
	nodeFilesPollInterval  = time.Second            // the nodes' published files
	readinessPollInterval  = 500 * time.Millisecond // a new engine becoming ready
	stopPollInterval       = 100 * time.Millisecond // a stop showing, after rank 0 ended
	prepPollInterval       = 500 * time.Millisecond // every node's report on the model's preparation
	prepProgressInterval   = 2 * time.Second        // the preparation's progress, in the log and the metrics
	readinessProbeTimeout  = 10 * time.Second       // one readiness probe
	rayQueryTimeout        = 10 * time.Second       // one query of the GCS
	engineScrapeTimeout    = 2 * time.Second        // one fetch of the engine's metrics
	auditSyncInterval      = time.Second            // the audit log reaching the disk
	keysCheckInterval      = 2 * time.Second        // the keys file changing
	readHeaderTimeout      = 10 * time.Second       // a client's request headers, on the public port
	gatewayCloseTimeout    = time.Second            // closing the public port at the end
	workerProbeTimeout     = time.Second            // a worker's agent answering, on a stop signal
	// stopSettle is how long a child's end that may be part of a stop waits for the stop to
	// reach this agent (or, for rank 0, a worker's node file): Slurm signals every process of
	// the step on every node at once, the children as well as the agents.
	stopSettle = 2 * time.Second
)

// served is what a node's metrics port serves beside the agent's own metrics and the GPUs'.
type served struct {
	collectors []prometheus.Collector
	// routes maps a pattern ("GET /metrics/engine") to its handler.
	routes map[string]http.Handler
}

// metricsStage serves /metrics, /healthz and /readyz on port, with what extra adds.
func (a *agent) metricsStage(run context.Context, port int, extra served) lifecycle.Stage {
	var stop func()
	return lifecycle.Stage{Name: "metrics", Start: func(context.Context) (<-chan error, error) {
		ctx, cancel := context.WithCancel(run)
		errc, err := a.serveMetrics(ctx, port, extra)
		if err != nil {
			cancel()
			return nil, err
		}
		done, finished := lifecycle.Ended(errc, func(err error) error { return fmt.Errorf("metrics server: %w", err) })
		stop = func() { cancel(); <-finished }
		return done, nil
	}, Stop: func() { stop() }}
}
