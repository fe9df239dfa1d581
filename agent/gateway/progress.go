package gateway

import (
	"io"
	"sync/atomic"
	"time"

	"github.com/llm-agent/llm-agent/healthcheck"
)

// progress follows the engine's work as the gateway sees it: how many requests wait on the
// engine, and when it last sent anything for any of them. The liveness watch reads it to tell
// a hung engine from a busy one.
type progress struct {
	waiting atomic.Int64
	last    atomic.Int64 // unix nanoseconds
}

// begin counts a request sent to the engine; the first one after a quiet spell starts the
// clock, so that idle time is not taken for a stall.
func (p *progress) begin() {
	if p.waiting.Add(1) == 1 {
		p.saw()
	}
}

// end counts a request finished, which is progress too.
func (p *progress) end() {
	p.saw()
	p.waiting.Add(-1)
}

func (p *progress) saw() { p.last.Store(time.Now().UnixNano()) }

// Activity is what the gateway sees of the engine now.
func (g *Gateway) Activity() healthcheck.Activity {
	return healthcheck.Activity{InFlight: int(g.progress.waiting.Load()), LastProgress: time.Unix(0, g.progress.last.Load())}
}

// sawDemand records a request with a valid key arriving at: a service that sleeps when idle
// goes by it, and so does the last-request gauge.
func (g *Gateway) sawDemand(at time.Time) {
	g.demand.Store(at.UnixNano())
	if m := g.opts.Metrics; m != nil {
		m.lastRequest.Set(float64(at.UnixNano()) / 1e9)
	}
}

// Idle is how long no client request with a valid key has arrived, counted from the gateway's
// start, with none in flight; 0 while one is. A request without a valid key keeps nothing
// awake: whoever can reach the port cannot hold the allocation.
func (g *Gateway) Idle() time.Duration {
	if g.active.Load() > 0 {
		return 0
	}
	return max(0, time.Since(time.Unix(0, g.demand.Load())))
}

// progressReader marks progress on every read that brings bytes from the engine.
type progressReader struct {
	io.ReadCloser
	p *progress
}

func (r progressReader) Read(b []byte) (int, error) {
	n, err := r.ReadCloser.Read(b)
	if n > 0 {
		r.p.saw()
	}
	return n, err
}
