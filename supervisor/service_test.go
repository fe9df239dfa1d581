package supervisor

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type eventLog struct {
	mu     sync.Mutex
	events []Event
	ch     chan Event
}

func newEventLog() *eventLog { return &eventLog{ch: make(chan Event, 100)} }

func (l *eventLog) add(e Event) {
	l.mu.Lock()
	l.events = append(l.events, e)
	l.mu.Unlock()
	l.ch <- e
}

// waitFor blocks until an event in state s arrives.
func (l *eventLog) waitFor(t *testing.T, s State) Event {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case e := <-l.ch:
			if e.State == s {
				return e
			}
		case <-deadline:
			t.Fatalf("no %s event", s)
		}
	}
}

func runService(t *testing.T, opts ServiceOptions) (context.CancelFunc, <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	s := NewService(opts)
	go func() { errc <- s.Run(ctx) }()
	t.Cleanup(cancel)
	return cancel, errc
}

func TestServiceRestartsCrashWithBackoff(t *testing.T) {
	clock := newFakeClock()
	events := newEventLog()
	policy := DefaultPolicy()
	policy.Jitter = 0
	cancel, errc := runService(t, ServiceOptions{
		Name:    "crasher",
		Command: func() (Options, error) { return helperOptions(t, "exit:1"), nil },
		Policy:  policy,
		Clock:   clock,
		OnEvent: events.add,
	})
	e := events.waitFor(t, StateBackoff)
	assert.Equal(t, time.Second, e.Delay)
	assert.Equal(t, ReasonExited, e.Cause)
	assert.Equal(t, "exit status 1", e.Reason)
	assert.Equal(t, 1, e.Restarts)
	clock.waitForTimer(t)
	clock.Advance(time.Second)
	events.waitFor(t, StateRunning)
	e = events.waitFor(t, StateBackoff)
	assert.Equal(t, 2*time.Second, e.Delay, "second crash doubles the delay")
	cancel()
	require.NoError(t, <-errc)
}

func TestServiceGivesUp(t *testing.T) {
	clock := newFakeClock()
	events := newEventLog()
	policy := DefaultPolicy()
	policy.MaxRestarts = 2
	_, errc := runService(t, ServiceOptions{
		Name:    "crasher",
		Command: func() (Options, error) { return helperOptions(t, "exit:7"), nil },
		Policy:  policy,
		Clock:   clock,
		OnEvent: events.add,
	})
	for i := 0; i < 2; i++ {
		clock.waitForTimer(t)
		clock.Advance(time.Minute)
	}
	err := <-errc
	require.Error(t, err)
	assert.True(t, errors.Is(err, ErrGaveUp))
	assert.Contains(t, err.Error(), "exit status 7")
	e := events.waitFor(t, StateFailed)
	assert.Contains(t, e.Reason, "gave up after 2 restarts")
}

func TestServiceRestartRequest(t *testing.T) {
	clock := newFakeClock()
	events := newEventLog()
	policy := DefaultPolicy()
	policy.Jitter = 0
	s := NewService(ServiceOptions{
		Name:    "sleeper",
		Command: func() (Options, error) { return helperOptions(t, "sleep"), nil },
		Policy:  policy,
		Clock:   clock,
		OnEvent: events.add,
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- s.Run(ctx) }()
	first := events.waitFor(t, StateRunning)
	s.Restart("unhealthy", "health probe failed 3 times")
	e := events.waitFor(t, StateBackoff)
	assert.Equal(t, "unhealthy", e.Cause)
	assert.False(t, alive(first.PID), "old child is gone before the restart")
	clock.waitForTimer(t)
	clock.Advance(time.Second)
	second := events.waitFor(t, StateRunning)
	assert.NotEqual(t, first.PID, second.PID)
	cancel()
	require.NoError(t, <-errc)
	assert.False(t, alive(second.PID))
}

func TestServiceBeforeGate(t *testing.T) {
	t.Run("error ends run", func(t *testing.T) {
		gateErr := errors.New("ray cluster incomplete")
		_, errc := runService(t, ServiceOptions{
			Name:    "gated",
			Command: func() (Options, error) { return helperOptions(t, "sleep"), nil },
			Before:  func(context.Context) error { return gateErr },
		})
		assert.ErrorIs(t, <-errc, gateErr)
	})
	t.Run("cancelled while waiting is a clean stop", func(t *testing.T) {
		entered := make(chan struct{})
		cancel, errc := runService(t, ServiceOptions{
			Name:    "gated",
			Command: func() (Options, error) { return helperOptions(t, "sleep"), nil },
			Before: func(ctx context.Context) error {
				close(entered)
				<-ctx.Done()
				return ctx.Err()
			},
		})
		<-entered
		cancel()
		assert.NoError(t, <-errc)
	})
}

func TestServiceStartFailure(t *testing.T) {
	_, errc := runService(t, ServiceOptions{
		Name:    "missing",
		Command: func() (Options, error) { return Options{Name: "vllm", Path: "no-such-vllm-binary"}, nil },
	})
	err := <-errc
	assert.ErrorIs(t, err, ErrNotFound)
}

func TestServiceCommandError(t *testing.T) {
	_, errc := runService(t, ServiceOptions{
		Name:    "bad",
		Command: func() (Options, error) { return Options{}, errors.New("no ports") },
	})
	assert.ErrorContains(t, <-errc, "prepare bad: no ports")
}

// TestServiceChildEndingWhileStoppingIsNotACrash: when the owner is stopping (Slurm signals
// every process of the step, so the child may end first), the child's end is neither
// restarted nor counted.
func TestServiceChildEndingWhileStoppingIsNotACrash(t *testing.T) {
	var stopping atomic.Bool
	var events []Event
	var mu sync.Mutex
	svc := NewService(ServiceOptions{
		Name:     "engine",
		Command:  func() (Options, error) { return helperOptions(t, "exit"), nil },
		Stopping: stopping.Load,
		OnEvent: func(e Event) {
			mu.Lock()
			events = append(events, e)
			mu.Unlock()
			if e.State == StateRunning {
				stopping.Store(true) // the stop signal reached the owner as the child ends
			}
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // bounds a service that would restart
	defer cancel()
	require.NoError(t, svc.Run(ctx))
	mu.Lock()
	defer mu.Unlock()
	var states []State
	for _, e := range events {
		states = append(states, e.State)
		assert.Zero(t, e.Restarts)
	}
	assert.Equal(t, []State{StateStarting, StateRunning, StateStopped}, states, "no backoff, no restart")
}

// TestServiceStopSettles: a child that exits as a stop would (status 0) before the owner has
// taken the same stop signal in is not a crash when the stop shows within StopSettle. (Without
// the settle, Slurm's SIGTERM ending the engine a moment before the agent took it in counted a
// restart, seen in a CI run.)
func TestServiceStopSettles(t *testing.T) {
	var stopping atomic.Bool
	l := newEventLog()
	svc := NewService(ServiceOptions{
		Name:       "engine",
		Command:    func() (Options, error) { return helperOptions(t, "exit:0"), nil },
		Stopping:   stopping.Load,
		StopSettle: 10 * time.Second,
		OnEvent:    l.add,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- svc.Run(ctx) }()
	l.waitFor(t, StateRunning)
	time.AfterFunc(200*time.Millisecond, func() { stopping.Store(true) }) // the owner's signal, late
	require.NoError(t, <-errc)
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.events {
		assert.NotEqual(t, StateBackoff, e.State, "not counted as a restart")
	}
	assert.Equal(t, StateStopped, l.events[len(l.events)-1].State)
}

// TestServiceStopSettleSparesCrashes: a crash (status 1) restarts at once, settle or not; a
// stop-like end with no stop behind it restarts once the settle is over.
func TestServiceStopSettleSparesCrashes(t *testing.T) {
	for _, tt := range []struct {
		mode    string
		settle  time.Duration
		minWait time.Duration
	}{{"exit:1", 10 * time.Second, 0}, {"exit:0", 300 * time.Millisecond, 300 * time.Millisecond}} {
		l := newEventLog()
		start := time.Now()
		cancel, errc := runService(t, ServiceOptions{
			Name:       "engine",
			Command:    func() (Options, error) { return helperOptions(t, tt.mode), nil },
			Stopping:   func() bool { return false },
			StopSettle: tt.settle,
			Policy:     Policy{Initial: time.Millisecond, Max: time.Millisecond, MaxRestarts: 5, Window: time.Minute, StableAfter: time.Hour},
			OnEvent:    l.add,
		})
		l.waitFor(t, StateBackoff)
		took := time.Since(start)
		cancel()
		<-errc
		assert.GreaterOrEqual(t, took, tt.minWait, tt.mode)
		if tt.minWait == 0 {
			assert.Less(t, took, 5*time.Second, "a crash is not held for the 10 s settle")
		}
	}
	assert.True(t, Exit{Code: 143}.LooksStopped())
	assert.True(t, Exit{Code: 137}.LooksStopped())
	assert.False(t, Exit{Code: 139}.LooksStopped(), "SIGSEGV is a crash")
	assert.False(t, Exit{Err: errors.New("wait failed")}.LooksStopped())
}
