package supervisor

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// Policy decides whether and when a child that stopped is started again: exponential backoff
// with jitter up to a cap, reset after a stable run, and a bound on restarts within a window.
// It holds no processes, so it is tested on its own with an injected clock.
type Policy struct {
	// Initial is the first backoff delay.
	Initial time.Duration
	// Max caps the delay.
	Max time.Duration
	// Multiplier grows the delay after each consecutive failure.
	Multiplier float64
	// Jitter spreads each delay by up to this fraction, so that many nodes do not restart in step.
	Jitter float64
	// StableAfter is how long a run must last for the backoff to start again from Initial.
	StableAfter time.Duration
	// MaxRestarts is how many restarts are allowed within Window before giving up.
	MaxRestarts int
	// Window is the sliding window that MaxRestarts counts in.
	Window time.Duration
	// Rand returns a number in [0,1); nil means math/rand.
	Rand func() float64

	consecutive int
	restarts    []time.Time
}

// DefaultPolicy returns the documented defaults: 1 s doubling to 60 s with 10% jitter, reset after
// 5 minutes of stable running, and at most 5 restarts in 10 minutes.
func DefaultPolicy() *Policy {
	return &Policy{
		Initial:     time.Second,
		Max:         time.Minute,
		Multiplier:  2,
		Jitter:      0.1,
		StableAfter: 5 * time.Minute,
		MaxRestarts: 5,
		Window:      10 * time.Minute,
	}
}

// Decision is the policy's answer to one exit.
type Decision struct {
	// Restart is false when the policy gives up.
	Restart bool
	// Delay is how long to wait before the restart.
	Delay time.Duration
	// Reason explains the decision in words for the log and the connection file.
	Reason string
}

// Decide records that a child which ran from started until now stopped for reason, and says
// what to do.
func (p *Policy) Decide(reason string, started, now time.Time) Decision {
	if now.Sub(started) >= p.StableAfter {
		p.consecutive = 0
	}
	kept := p.restarts[:0]
	for _, t := range p.restarts {
		if now.Sub(t) < p.Window {
			kept = append(kept, t)
		}
	}
	p.restarts = kept
	if len(p.restarts) >= p.MaxRestarts {
		return Decision{Reason: fmt.Sprintf("gave up after %d restarts in %s; last: %s",
			len(p.restarts), p.Window, reason)}
	}
	delay := p.delay()
	p.consecutive++
	p.restarts = append(p.restarts, now)
	return Decision{
		Restart: true,
		Delay:   delay,
		Reason:  fmt.Sprintf("%s; restart %d of %d allowed in %s, after %s", reason, len(p.restarts), p.MaxRestarts, p.Window, delay.Round(time.Millisecond)),
	}
}

// Restarts returns how many restarts fall in the current window.
func (p *Policy) Restarts() int { return len(p.restarts) }

func (p *Policy) delay() time.Duration {
	d := float64(p.Initial) * math.Pow(p.Multiplier, float64(p.consecutive))
	if p.Jitter > 0 {
		r := rand.Float64
		if p.Rand != nil {
			r = p.Rand
		}
		d += d * p.Jitter * (2*r() - 1)
	}
	return min(time.Duration(d), p.Max)
}
