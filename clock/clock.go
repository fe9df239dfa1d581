// Package clock is the one time source of the agent's timed loops: readiness waits, liveness
// probes, the rendezvous and Ray waits, the keys file watch and the restart backoff. The loops
// take a Clock, so that tests drive them with Fake time instead of waiting. It knows nothing of
// what is timed.
package clock

import (
	"sync"
	"time"
)

// Clock tells the time and makes timers.
type Clock interface {
	Now() time.Time
	// After returns a channel that receives the time once d has passed.
	After(d time.Duration) <-chan time.Time
}

// Real is the wall clock.
type Real struct{}

var _ Clock = Real{}

// Now returns the current time.
func (Real) Now() time.Time { return time.Now() }

// After waits for d on a timer.
func (Real) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Fake is a Clock whose time moves only when Advance is called, for tests.
type Fake struct {
	mu      sync.Mutex
	now     time.Time
	waiters []waiter
	timers  chan struct{}
}

var _ Clock = (*Fake)(nil)

type waiter struct {
	at time.Time
	ch chan time.Time
}

// NewFake returns a fake clock at a fixed time.
func NewFake() *Fake {
	return &Fake{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), timers: make(chan struct{}, 1024)}
}

// Now returns the fake time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// After returns a channel that fires once the fake time has moved d on.
func (f *Fake) After(d time.Duration) <-chan time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- f.now
		return ch
	}
	f.waiters = append(f.waiters, waiter{at: f.now.Add(d), ch: ch})
	select {
	case f.timers <- struct{}{}:
	default:
	}
	return ch
}

// Advance moves the time on by d and fires the timers that are due.
func (f *Fake) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
	kept := f.waiters[:0]
	for _, w := range f.waiters {
		if !w.at.After(f.now) {
			w.ch <- f.now
		} else {
			kept = append(kept, w)
		}
	}
	f.waiters = kept
}

// Timers receives once for every timer asked for, so that a test can wait (with a deadline of
// its own) until the code it drives is waiting on the clock.
func (f *Fake) Timers() <-chan struct{} { return f.timers }

// AdvanceOnWait moves the time on by step each time code waits on the clock, until stop is
// called: for tests of loops that wait many times.
func (f *Fake) AdvanceOnWait(step time.Duration) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case <-done:
				return
			case <-f.timers:
				f.Advance(step)
			}
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}
