// Package healthcheck holds the generic waits of the agent: polling a readiness check until it
// holds, and the liveness judgement that tells a hung engine from a busy one by its probes and
// by the progress of the requests in flight. What is probed is the caller's (vllm.Probe for the
// engine), and so is the view of the requests (the gateway's).
package healthcheck

import (
	"context"
	"errors"
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

// Activity is what the gateway sees of the engine's work.
type Activity struct {
	// InFlight counts requests sent to the engine and not yet finished.
	InFlight int
	// LastProgress is when the engine last sent anything (headers, a chunk, a body) for any
	// request, or when the first of the requests now in flight was sent.
	LastProgress time.Time
}

// Liveness decides when a running engine is hung, from two views: a probe of the engine's
// health, and what the gateway sees of its work. The engine is hung when, for HangAfter, no
// probe has been answered and no request in flight has made progress. A loaded engine may
// answer its probes slowly, or not at all for a while, but while it sends tokens it is not
// hung; an idle engine has its probes alone to show it is alive.
type Liveness struct {
	// Probe is one health check.
	Probe func(ctx context.Context) error
	// Interval is the time between the starts of two probes, and between two judgements.
	Interval time.Duration
	// Timeout bounds one probe.
	Timeout time.Duration
	// HangAfter is how long no answered probe and no progress make the engine hung.
	HangAfter time.Duration
	// Activity, if set, tells what the gateway sees; nil leaves the probes alone to decide.
	Activity func() Activity
	// OnUnhealthy is called when the engine is judged hung, with why; once per hang.
	OnUnhealthy func(err error)
	// OnProbe, if set, is told of every probe's outcome.
	OnProbe func(err error)
	// Clock times the intervals; nil means the wall clock.
	Clock clock.Clock
}

// Run probes and judges until ctx ends. A probe runs beside the judgement, so a probe that
// hangs until its timeout does not delay the verdict.
func (l Liveness) Run(ctx context.Context) {
	clk := l.Clock
	if clk == nil {
		clk = clock.Real{}
	}
	results := make(chan error, 1)
	probing := false
	lastOK := clk.Now() // the engine was just found ready
	var lastErr error
	next := clk.Now().Add(l.Interval)
	for {
		select {
		case <-ctx.Done():
			return
		case err := <-results:
			probing = false
			if l.OnProbe != nil {
				l.OnProbe(err)
			}
			if err == nil {
				lastOK = clk.Now()
			} else {
				lastErr = err
			}
			continue
		case <-clk.After(next.Sub(clk.Now())):
		}
		next = clk.Now().Add(l.Interval)
		if !probing {
			probing = true
			go func() {
				pctx, cancel := context.WithTimeout(ctx, l.Timeout)
				defer cancel()
				results <- l.Probe(pctx)
			}()
		}
		var act *Activity
		if l.Activity != nil {
			a := l.Activity()
			act = &a
		}
		if err := l.judge(clk.Now(), lastOK, lastErr, act); err != nil {
			l.OnUnhealthy(err)
			lastOK = clk.Now() // once per hang; the restart ends this watch
		}
	}
}

// judge returns why the engine is hung at now, or nil while it is not.
func (l Liveness) judge(now, lastOK time.Time, lastErr error, act *Activity) error {
	if !silent(now, lastOK, act, l.HangAfter) {
		return nil
	}
	silent := now.Sub(lastOK)
	why := fmt.Sprintf("the health probe has not passed for %s", silent.Round(time.Second))
	if lastErr != nil {
		why += fmt.Sprintf(" (last: %v)", lastErr)
	}
	if act != nil && act.InFlight > 0 {
		why += fmt.Sprintf(", and no progress on %d requests in flight for %s", act.InFlight, now.Sub(act.LastProgress).Round(time.Second))
	}
	return errors.New(why)
}

// silent tells whether an engine has shown no sign of life for after: no probe passed, and no
// request in flight made progress (one slow to answer its probes while it sends tokens works).
func silent(now, lastOK time.Time, act *Activity, after time.Duration) bool {
	if now.Sub(lastOK) < after {
		return false
	}
	return act == nil || act.InFlight == 0 || now.Sub(act.LastProgress) >= after
}
