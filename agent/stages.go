package agent

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
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
)

// stage is one part of a node's run. The stages of a role are started in order, each once the
// one before is up, and stopped in reverse order.
type stage struct {
	name string
	// start brings the stage up and returns once it is up. ctx ends when the run is asked to
	// stop, which abandons a start that waits; what the stage keeps running must not end with
	// it (see life). A start that fails leaves nothing of its own running. done, when not nil,
	// reports the stage ending while the run goes on: the run then fails with that error.
	start func(ctx context.Context) (done <-chan error, err error)
	// stop takes the stage down and returns once it is down; nil when there is nothing to stop.
	stop func()
}

// runStages starts stages in order, then waits until ctx ends or a stage ends by itself. It
// calls beforeStop with the failure (nil for a requested stop), which returns the failure to
// report (it may find one behind a stop request), stops the stages that started in reverse
// order, and returns that failure: a start's error, unless the stop request came during that
// start, or the error of the stage that ended.
func runStages(ctx context.Context, stages []stage, beforeStop func(failure error) error) error {
	ended := make(chan error, len(stages))
	var started []stage
	var failure error
	for _, s := range stages {
		done, err := s.start(ctx)
		if err != nil {
			if ctx.Err() == nil {
				failure = err
			}
			break
		}
		started = append(started, s)
		if done != nil {
			go func() { ended <- <-done }()
		}
	}
	if failure == nil && ctx.Err() == nil && len(started) == len(stages) {
		select {
		case <-ctx.Done():
		case failure = <-ended:
		}
	}
	failure = beforeStop(failure)
	for i := len(started) - 1; i >= 0; i-- {
		if started[i].stop != nil {
			started[i].stop()
		}
	}
	return failure
}

// life returns the context that what the stages run lives in: it keeps ctx's values but not its
// end, since the run is stopped stage by stage, in order, after ctx ends.
func life(ctx context.Context) context.Context {
	return context.WithoutCancel(ctx)
}

// ended forwards the one value of errc, wrapped unless nil, to done, and closes finished after
// it.
func ended(errc <-chan error, wrap func(error) error) (done <-chan error, finished <-chan struct{}) {
	d, f := make(chan error, 1), make(chan struct{})
	go func() {
		if err := <-errc; err != nil {
			d <- wrap(err)
		} else {
			d <- nil
		}
		close(f)
	}()
	return d, f
}

// background runs fn in a goroutine with its own context from parent, and returns the stop
// function: it ends the context and waits for fn to return.
func background(parent context.Context, fn func(ctx context.Context)) (stop func()) {
	ctx, cancel := context.WithCancel(parent)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		fn(ctx)
	}()
	return func() {
		cancel()
		<-finished
	}
}

// served is what a node's metrics port serves beside the agent's own metrics and the GPUs'.
type served struct {
	collectors []prometheus.Collector
	// routes maps a pattern ("GET /metrics/engine") to its handler.
	routes map[string]http.Handler
}

// metricsStage serves /metrics, /healthz and /readyz on port, with what extra adds.
func (a *agent) metricsStage(run context.Context, port int, extra served) stage {
	var stop func()
	return stage{name: "metrics", start: func(context.Context) (<-chan error, error) {
		ctx, cancel := context.WithCancel(run)
		errc, err := a.serveMetrics(ctx, port, extra)
		if err != nil {
			cancel()
			return nil, err
		}
		done, finished := ended(errc, func(err error) error { return fmt.Errorf("metrics server: %w", err) })
		stop = func() { cancel(); <-finished }
		return done, nil
	}, stop: func() { stop() }}
}
