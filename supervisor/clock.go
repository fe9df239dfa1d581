package supervisor

import "time"

// Clock is the time source of the restart policy and the backoff wait, injected so tests run on
// fake time.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

// RealClock is the wall clock.
type RealClock struct{}

var _ Clock = RealClock{}

// Now returns the current time.
func (RealClock) Now() time.Time { return time.Now() }

// After waits for d on a timer.
func (RealClock) After(d time.Duration) <-chan time.Time { return time.After(d) }
