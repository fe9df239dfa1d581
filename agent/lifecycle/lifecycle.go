// Package lifecycle runs a node's parts as an ordered list of stages: each is started once the
// one before it is up, the list waits until it is asked to stop or a stage ends by itself, and
// the stages that started are stopped in reverse order. It is the agent's run.Group
// (oklog/run, as Prometheus uses it), with the order kept: it knows nothing of what a stage runs.
package lifecycle

import "context"

// Stage is one part of a node's run.
type Stage struct {
	// Name names the stage in logs.
	Name string
	// Start brings the stage up and returns once it is up. ctx ends when the run is asked to
	// stop, which abandons a start that waits; what the stage keeps running must not end with
	// it (see Life). A start that fails leaves nothing of its own running. done, when not nil,
	// reports the stage ending while the run goes on: the run then fails with that error.
	Start func(ctx context.Context) (done <-chan error, err error)
	// Stop takes the stage down and returns once it is down; nil when there is nothing to stop.
	Stop func()
}

// Run starts stages in order, then waits until ctx ends or a stage ends by itself. It calls
// beforeStop with the failure (nil for a requested stop), which returns the failure to report
// (it may find one behind a stop request), stops the stages that started in reverse order, and
// returns that failure: a start's error, unless the stop request came during that start, or
// the error of the stage that ended.
func Run(ctx context.Context, stages []Stage, beforeStop func(failure error) error) error {
	ended := make(chan error, len(stages))
	var started []Stage
	var failure error
	for _, s := range stages {
		done, err := s.Start(ctx)
		if err != nil {
			if ctx.Err() == nil {
				failure = err
			}
			break
		}
		started = append(started, s)
		if done != nil {
			go func() { ended <- <-done }()
		}
	}
	if failure == nil && ctx.Err() == nil && len(started) == len(stages) {
		select {
		case <-ctx.Done():
		case failure = <-ended:
		}
	}
	failure = beforeStop(failure)
	for i := len(started) - 1; i >= 0; i-- {
		if started[i].Stop != nil {
			started[i].Stop()
		}
	}
	return failure
}

// Life returns the context that what the stages run lives in: it keeps ctx's values but not its
// end, since the run is stopped stage by stage, in order, after ctx ends.
func Life(ctx context.Context) context.Context {
	return context.WithoutCancel(ctx)
}

// Ended forwards the one value of errc, wrapped unless nil, to done, and closes finished after
// it.
func Ended(errc <-chan error, wrap func(error) error) (done <-chan error, finished <-chan struct{}) {
	d, f := make(chan error, 1), make(chan struct{})
	go func() {
		if err := <-errc; err != nil {
			d <- wrap(err)
		} else {
			d <- nil
		}
		close(f)
	}()
	return d, f
}

// Background runs fn in a goroutine with its own context from parent, and returns the stop
// function: it ends the context and waits for fn to return.
func Background(parent context.Context, fn func(ctx context.Context)) (stop func()) {
	ctx, cancel := context.WithCancel(parent)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		fn(ctx)
	}()
	return func() {
		cancel()
		<-finished
	}
}
