// Package scale decides how many Slurm jobs a service runs (--max-jobs): from the requests
// waiting at its engines, averaged over a look-back window, it asks for one more job when the
// average stays above the target for the up delay, and for one fewer when the engines but the
// youngest could run every request in flight without a queue for the down delay. It is a value
// fed with samples and the time; it starts and stops nothing (agent/service acts on it).
package scale

import (
	"errors"
	"fmt"
	"time"
)

// ErrInvalid is wrapped by settings that cannot work.
var ErrInvalid = errors.New("invalid scaling settings")

// Settings are a service's scaling settings.
type Settings struct {
	// MaxJobs bounds the service's jobs, the serving one included (1: no scaling).
	MaxJobs int
	// Target is the requests waiting per engine above which the service grows.
	Target float64
	// Window is how far back the signal is averaged; Interval how often it is sampled.
	Window, Interval time.Duration
	// UpDelay is how long the average must stay above the target before a job is added;
	// DownDelay how long the smaller service must have sufficed before one is removed.
	UpDelay, DownDelay time.Duration
	// Capacity is the requests one engine runs at once (its --max-num-seqs).
	Capacity int
}

// Check tells what is wrong with s.
func (s Settings) Check() error {
	switch {
	case s.MaxJobs < 1:
		return fmt.Errorf("%w: --max-jobs %d: give at least 1 (the serving job)", ErrInvalid, s.MaxJobs)
	case s.MaxJobs == 1:
		return nil
	case s.Target <= 0:
		return fmt.Errorf("%w: --scale-target %g: give a number of waiting requests per engine above 0", ErrInvalid, s.Target)
	case s.Interval <= 0:
		return fmt.Errorf("%w: --scale-interval %s: give a positive interval", ErrInvalid, s.Interval)
	case s.Window < s.Interval:
		return fmt.Errorf("%w: --scale-window %s is shorter than the sampling interval %s: it would average nothing", ErrInvalid, s.Window, s.Interval)
	case s.UpDelay < 0 || s.DownDelay < 0:
		return fmt.Errorf("%w: the scaling delays cannot be negative", ErrInvalid)
	case s.Capacity < 1:
		return fmt.Errorf("%w: an engine's capacity must be at least 1", ErrInvalid)
	}
	return nil
}

// Sample is the service's load at one moment.
type Sample struct {
	At time.Time
	// Engines are the engines serving (the serving job's and its extra jobs' that are ready).
	Engines int
	// Waiting are the requests waiting at all of them; Running those they run.
	Waiting, Running int
}

// Action is a decision.
type Action int

// The decisions.
const (
	Hold Action = iota
	Up
	Down
)

func (a Action) String() string { return [...]string{"hold", "up", "down"}[a] }

// Decision is what the policy asks for and why.
type Decision struct {
	Action Action
	// Signal is the average waiting requests per engine over the window.
	Signal float64
	// Desired is the jobs the service should have after the decision.
	Desired int
	Reason  string
}

// Policy keeps the window of samples and the times the conditions began to hold.
type Policy struct {
	s       Settings
	samples []Sample
	// over is since when the average has been above the target; under since when the engines
	// but one would have sufficed. Zero: not now.
	over, under time.Time
}

// New returns a policy; s must pass Check.
func New(s Settings) *Policy { return &Policy{s: s} }

// Observe adds a sample and decides, given the jobs the service has (the serving one and the
// extra ones, started or queued) and how many of them are queued or starting: while one is,
// the policy waits for it rather than ask again for the same load.
func (p *Policy) Observe(x Sample, jobs, starting int) Decision {
	p.samples = append(p.samples, x)
	for len(p.samples) > 0 && x.At.Sub(p.samples[0].At) > p.s.Window {
		p.samples = p.samples[1:]
	}
	var waiting, engines float64
	var busiest int
	for _, s := range p.samples {
		waiting += float64(s.Waiting)
		engines += float64(max(1, s.Engines))
		busiest = max(busiest, s.Running+s.Waiting)
	}
	signal := waiting / engines
	d := Decision{Action: Hold, Signal: signal, Desired: jobs}
	since := func(t *time.Time, holds bool) time.Duration {
		if !holds {
			*t = time.Time{}
			return -1
		}
		if t.IsZero() {
			*t = x.At
		}
		return x.At.Sub(*t)
	}
	// Above the target over the window, and now: a burst that is over adds nothing.
	now := float64(x.Waiting) / float64(max(1, x.Engines))
	up := since(&p.over, signal > p.s.Target && now > p.s.Target && starting == 0)
	// The engines but one would run the busiest moment of the window without a queue.
	down := since(&p.under, jobs > 1 && starting == 0 && x.Engines > 1 && busiest <= (x.Engines-1)*p.s.Capacity)
	switch {
	case up >= p.s.UpDelay && jobs < p.s.MaxJobs:
		d.Action, d.Desired = Up, jobs+1
		d.Reason = fmt.Sprintf("%.1f requests waiting per engine over %s, above the target %g for %s", signal, p.s.Window, p.s.Target, up.Round(time.Second))
		p.over, p.under = time.Time{}, time.Time{}
	case starting > 0:
		d.Reason = fmt.Sprintf("%.1f requests waiting per engine; %d job(s) asked for are not serving yet", signal, starting)
	case up >= p.s.UpDelay:
		d.Reason = fmt.Sprintf("%.1f requests waiting per engine, above the target %g, but the service has its --max-jobs %d", signal, p.s.Target, p.s.MaxJobs)
	case down >= p.s.DownDelay:
		d.Action, d.Desired = Down, jobs-1
		d.Reason = fmt.Sprintf("at most %d requests in flight over %s: %d engines run them without a queue, for %s", busiest, p.s.Window, x.Engines-1, down.Round(time.Second))
		p.over, p.under = time.Time{}, time.Time{}
		p.samples = nil // the next decision waits for a window of the smaller service
	}
	return d
}
