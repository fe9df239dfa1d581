package engine

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/llm-agent/llm-agent/agent/node"
	"github.com/llm-agent/llm-agent/healthcheck"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/supervisor"
	"github.com/llm-agent/llm-agent/vllm"
)

// Timings of the follow that are not the user's settings.
const (
	readinessPollInterval = 500 * time.Millisecond // a new engine becoming ready
	readinessProbeTimeout = 10 * time.Second       // one readiness probe
	scrapeTimeout         = 2 * time.Second        // one fetch of the engine's metrics
)

// How fast an engine that stops answering leaves the rotation of a job with replicas: it is
// probed every interval, and out once silent for answeringAfter with no request making
// progress; the head's check of the replicas then sees it, within 5 s in all.
const (
	answeringInterval = time.Second
	answeringTimeout  = 2 * time.Second
	answeringAfter    = 3 * time.Second
)

// Follow waits for an engine that just started to become ready (else restarts it), calls
// ready, then watches its liveness and restarts it when it fails, until ctx ends. activity is
// what the gateway in front of it sees of its requests, if any.
func Follow(ctx context.Context, e *node.Env, eng vllm.Probe, svc *supervisor.Service, activity func() healthcheck.Activity, ready func()) {
	served := e.Cfg.ServedName()
	rctx, cancel := context.WithTimeout(ctx, e.Cfg.EngineTimeout)
	err := healthcheck.WaitReady(rctx, e.Clock, readinessPollInterval, func(ctx context.Context) error {
		pctx, cancel := context.WithTimeout(ctx, readinessProbeTimeout)
		defer cancel()
		return eng.Ready(pctx, served)
	})
	cancel()
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		svc.Restart("start_timeout", fmt.Sprintf("engine not ready within %s: %v", e.Cfg.EngineTimeout, err))
		return
	}
	ready()
	healthcheck.Liveness{
		Probe:     eng.Health,
		Interval:  e.Cfg.ProbeInterval,
		Timeout:   e.Cfg.ProbeTimeout,
		HangAfter: e.Cfg.HangAfter,
		Clock:     e.Clock,
		Activity:  activity,
		OnUnhealthy: func(err error) {
			e.Log.Warn("engine unhealthy, restarting", "reason", err)
			svc.Restart("unhealthy", err.Error())
		},
	}.Run(ctx)
}

// Answering follows whether the engine of a replica answers now (healthcheck.Responsiveness),
// a new watch for each engine started. Its zero value is ready to use.
type Answering struct {
	watch atomic.Pointer[healthcheck.Responsiveness]
}

// Follow watches a new engine until ctx ends.
func (w *Answering) Follow(ctx context.Context, e *node.Env, eng vllm.Probe, activity func() healthcheck.Activity) {
	r := &healthcheck.Responsiveness{Probe: eng.Health, Interval: answeringInterval, Timeout: answeringTimeout,
		After: answeringAfter, Activity: activity, Clock: e.Clock}
	w.watch.Store(r)
	go r.Run(ctx)
}

// Ready is ready, less the time the engine does not answer.
func (w *Answering) Ready(ready func() (bool, string)) func() (bool, string) {
	return func() (bool, string) {
		ok, why := ready()
		if r := w.watch.Load(); ok && r != nil && !r.Responsive() {
			return false, "the engine does not answer"
		}
		return ok, why
	}
}

// MetricsRoute serves the engine of a slot's own /metrics on its path of the node's metrics
// port (targets.json lists each).
func MetricsRoute(e *node.Env, routes map[string]http.Handler, slot int, eng vllm.Endpoint) {
	routes["GET "+jobfiles.EngineMetricsPathOf(vllm.EngineMetricsPath, slot)] = vllm.MetricsHandler(
		eng.BaseURL()+"/metrics", eng.Transport(1), scrapeTimeout, e.Log.Named("engine-metrics"))
}
