package healthcheck

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/llm-agent/llm-agent/clock"
)

// Responsiveness tells, within seconds, whether an engine answers now: it is unresponsive while
// its probe has not passed for After and no request in flight has made progress for After (a
// busy engine that sends tokens answers, however slow its probe). It restarts nothing: a
// gateway that routes to several replicas takes an unresponsive one out of its rotation, and
// back as soon as it answers again, while Liveness decides, much later, that it is hung.
type Responsiveness struct {
	// Probe asks the engine; Interval and Timeout pace it.
	Probe             func(ctx context.Context) error
	Interval, Timeout time.Duration
	// After is how long the engine may be silent and still count as answering.
	After time.Duration
	// Activity, if set, tells what the gateway sees of the engine's work.
	Activity func() Activity
	// Clock times it; nil means the wall clock.
	Clock clock.Clock

	lastOK atomic.Int64 // unix nanoseconds of the last probe that passed
}

func (r *Responsiveness) clock() clock.Clock {
	if r.Clock == nil {
		return clock.Real{}
	}
	return r.Clock
}

// Run probes until ctx ends; the engine counts as answering from the start.
func (r *Responsiveness) Run(ctx context.Context) {
	clk := r.clock()
	r.lastOK.Store(clk.Now().UnixNano())
	results := make(chan error, 1)
	for {
		go func() { // one probe at a time: the next starts once this one is answered or timed out
			pctx, cancel := context.WithTimeout(ctx, r.Timeout)
			defer cancel()
			results <- r.Probe(pctx)
		}()
		select {
		case <-ctx.Done():
			return
		case err := <-results:
			if err == nil {
				r.lastOK.Store(clk.Now().UnixNano())
			}
			select { // the next probe after an interval
			case <-ctx.Done():
				return
			case <-clk.After(r.Interval):
			}
		}
	}
}

// Responsive tells whether the engine answers now. Before Run starts, it does.
func (r *Responsiveness) Responsive() bool {
	last := r.lastOK.Load()
	if last == 0 {
		return true
	}
	now := r.clock().Now()
	if now.Sub(time.Unix(0, last)) < r.After {
		return true // the common case, on every request: no look at the requests needed
	}
	var act *Activity
	if r.Activity != nil {
		a := r.Activity()
		act = &a
	}
	return !silent(now, time.Unix(0, last), act, r.After)
}
