package node

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/llm-agent/llm-agent/agent/lifecycle"
	"github.com/llm-agent/llm-agent/agent/metrics"
	"github.com/llm-agent/llm-agent/gpu"
)

// Served is what a node's metrics port serves beside the agent's own metrics and the GPUs'.
type Served struct {
	Collectors []prometheus.Collector
	// Routes maps a pattern ("GET /metrics/engine") to its handler.
	Routes map[string]http.Handler
}

// MetricsStage serves /metrics, /healthz and /readyz on port, with what extra adds, until the
// stage stops.
func (e *Env) MetricsStage(run context.Context, port int, extra Served) lifecycle.Stage {
	var stop func()
	return lifecycle.Stage{Name: "metrics", Start: func(context.Context) (<-chan error, error) {
		ctx, cancel := context.WithCancel(run)
		errc, err := e.serveMetrics(ctx, port, extra)
		if err != nil {
			cancel()
			return nil, err
		}
		done, finished := lifecycle.Ended(errc, func(err error) error { return fmt.Errorf("metrics server: %w", err) })
		stop = func() { cancel(); <-finished }
		return done, nil
	}, Stop: func() { stop() }}
}

// serveMetrics binds the metrics port now, so that a port that cannot be bound fails the start,
// and serves the agent's, the GPUs' and what extra adds until ctx ends.
func (e *Env) serveMetrics(ctx context.Context, port int, extra Served) (<-chan error, error) {
	ln, err := net.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		return nil, fmt.Errorf("%w: metrics port %d: %w", ErrPort, port, err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewAgentCollector(e.State, nil), metrics.NewProcessCollector(e.State, nil, nil), metrics.NewFileCollector(e.State),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if e.NVML != nil {
		g := gpu.New(e.NVML, gpu.Options{Node: e.Alloc.Hostname(), Job: e.Alloc.JobID, Visible: e.Alloc.GPUIDs,
			InJob: !e.Alloc.Local, SlowInterval: e.Cfg.GPUSampleInterval, Accessible: e.GPUAccessible,
			Logger: e.Log.Named("gpu")})
		reg.MustRegister(g)
		go g.Run(ctx)
	}
	for _, c := range append(e.Collectors, extra.Collectors...) {
		reg.MustRegister(c)
	}
	errc := make(chan error, 1)
	go func() { errc <- metrics.Serve(ctx, ln, metrics.Handler(reg, e.State, extra.Routes)) }()
	return errc, nil
}
