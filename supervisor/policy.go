package supervisor

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// Policy is when a child that stopped is started again: exponential backoff with jitter up to a
// cap, reset after a stable run, and a bound on restarts within a window. It is settings only;
// a Tracker applies it to one service's endings.
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
}

// DefaultPolicy returns the documented defaults: 1 s doubling to 60 s with 10% jitter, reset after
// 5 minutes of stable running, and at most 5 restarts in 10 minutes.
func DefaultPolicy() Policy {
	return Policy{
		Initial:     time.Second,
		Max:         time.Minute,
		Multiplier:  2,
		Jitter:      0.1,
		StableAfter: 5 * time.Minute,
		MaxRestarts: 5,
		Window:      10 * time.Minute,
	}
}

// Ending is how one run of a child ended: by itself, with its exit, or stopped because a
// restart was asked for, with the request's reason (the exit is then the stop's).
type Ending struct {
	Exit Exit
	// Requested is the reason of the restart that stopped the child; empty when it ended alone.
	Requested string
}

// String describes the ending for logs and reasons.
func (e Ending) String() string {
	if e.Requested != "" {
		return e.Requested
	}
	return e.Exit.String()
}

// Decision is the policy's answer to one ending.
type Decision struct {
	// Restart is false when the policy gives up.
	Restart bool
	// Delay is how long to wait before the restart.
	Delay time.Duration
	// Reason explains the decision in words for the log and the connection file.
	Reason string
}

// Tracker applies a Policy to the endings of one service's children. It holds no processes, so
// it is tested on its own with an injected clock.
type Tracker struct {
	policy Policy
	// rand returns a number in [0,1).
	rand        func() float64
	consecutive int
	restarts    []time.Time
}

// NewTracker returns a tracker of p; rand (nil: math/rand) spreads the delays.
func NewTracker(p Policy, rand func() float64) *Tracker {
	return &Tracker{policy: p, rand: rand}
}

// Decide records that a child which ran from started until now ended as end, and says what to
// do.
func (t *Tracker) Decide(end Ending, started, now time.Time) Decision {
	p := t.policy
	if now.Sub(started) >= p.StableAfter {
		t.consecutive = 0
	}
	kept := t.restarts[:0]
	for _, r := range t.restarts {
		if now.Sub(r) < p.Window {
			kept = append(kept, r)
		}
	}
	t.restarts = kept
	if len(t.restarts) >= p.MaxRestarts {
		return Decision{Reason: fmt.Sprintf("gave up after %d restarts in %s; last: %s", len(t.restarts), p.Window, end)}
	}
	delay := t.delay()
	t.consecutive++
	t.restarts = append(t.restarts, now)
	return Decision{
		Restart: true,
		Delay:   delay,
		Reason: fmt.Sprintf("%s; restart %d of %d allowed in %s, after %s", end, len(t.restarts), p.MaxRestarts, p.Window,
			delay.Round(time.Millisecond)),
	}
}

// Restarts returns how many restarts fall in the current window.
func (t *Tracker) Restarts() int { return len(t.restarts) }

func (t *Tracker) delay() time.Duration {
	p := t.policy
	d := float64(p.Initial) * math.Pow(p.Multiplier, float64(t.consecutive))
	if p.Jitter > 0 {
		r := rand.Float64
		if t.rand != nil {
			r = t.rand
		}
		d += d * p.Jitter * (2*r() - 1)
	}
	return min(time.Duration(d), p.Max)
}
