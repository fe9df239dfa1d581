package healthcheck

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestResponsiveness(t *testing.T) {
	var hang atomic.Bool
	var act atomic.Pointer[Activity]
	act.Store(&Activity{})
	r := &Responsiveness{
		Probe: func(ctx context.Context) error {
			if hang.Load() {
				<-ctx.Done() // a stopped engine: the connection is taken, nothing answers
				return ctx.Err()
			}
			return nil
		},
		Interval: 20 * time.Millisecond, Timeout: 100 * time.Millisecond, After: 300 * time.Millisecond,
		Activity: func() Activity { return *act.Load() },
	}
	assert.True(t, r.Responsive(), "before it runs")
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	assert.True(t, r.Responsive())
	hang.Store(true)
	stopped := time.Now()
	require.Eventually(t, func() bool { return !r.Responsive() }, 2*time.Second, 5*time.Millisecond)
	took := time.Since(stopped)
	assert.GreaterOrEqual(t, took, 300*time.Millisecond, "silent for less than After still answers")
	assert.Less(t, took, 600*time.Millisecond, "within After and a probe's timeout")

	// Requests in flight that make progress: slow probes alone do not take it out.
	act.Store(&Activity{InFlight: 2, LastProgress: time.Now()})
	assert.True(t, r.Responsive())
	act.Store(&Activity{InFlight: 2, LastProgress: time.Now().Add(-time.Second)})
	assert.False(t, r.Responsive(), "in flight, but stalled")

	hang.Store(false)
	require.Eventually(t, func() bool { return r.Responsive() }, 2*time.Second, 5*time.Millisecond, "back once a probe passes")
}

func TestResponsivenessFailedProbes(t *testing.T) {
	r := &Responsiveness{Probe: func(context.Context) error { return errors.New("503") },
		Interval: 10 * time.Millisecond, Timeout: 50 * time.Millisecond, After: 100 * time.Millisecond}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	require.Eventually(t, func() bool { return !r.Responsive() }, 2*time.Second, 5*time.Millisecond)
	cancel()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Run did not end with its context")
	}
}
