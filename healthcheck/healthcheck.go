// Package healthcheck holds the generic waits of the agent: polling a readiness check until it
// holds, and liveness probing that acts only after several failures in a row, because a busy
// service answers slowly. What is probed is the caller's (vllm.Probe for the engine).
package healthcheck

import (
	"context"
	"fmt"
	"time"

	"github.com/llm-agent/llm-agent/clock"
)

// WaitReady polls check every interval until it returns nil or ctx ends; it returns the last
// check error with the context's.
func WaitReady(ctx context.Context, clk clock.Clock, interval time.Duration, check func(ctx context.Context) error) error {
	var last error
	for {
		if last = check(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last check: %w)", ctx.Err(), last)
		case <-clk.After(interval):
		}
	}
}

// Liveness probes on an interval and reports when Failures probes in a row have failed.
type Liveness struct {
	// Probe is one liveness check.
	Probe func(ctx context.Context) error
	// Interval is the time between the end of one probe and the start of the next.
	Interval time.Duration
	// Timeout bounds one probe; make it long, since a loaded engine answers slowly.
	Timeout time.Duration
	// Failures is how many failures in a row make the engine unhealthy.
	Failures int
	// OnUnhealthy is called once per run of Failures failures, with the last error.
	OnUnhealthy func(err error)
	// OnProbe, if set, is told of every probe's outcome.
	OnProbe func(err error)
	// Clock times the intervals; nil means the wall clock.
	Clock clock.Clock
}

// Run probes until ctx ends.
func (l Liveness) Run(ctx context.Context) {
	clk := l.Clock
	if clk == nil {
		clk = clock.Real{}
	}
	failed := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-clk.After(l.Interval):
		}
		pctx, cancel := context.WithTimeout(ctx, l.Timeout)
		err := l.Probe(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if l.OnProbe != nil {
			l.OnProbe(err)
		}
		if err == nil {
			failed = 0
		} else if failed++; failed >= l.Failures {
			failed = 0
			l.OnUnhealthy(fmt.Errorf("%d liveness probes failed in a row; last: %w", l.Failures, err))
		}
	}
}
