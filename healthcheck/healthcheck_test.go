package healthcheck

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/clock"
)

func TestWaitReady(t *testing.T) {
	clk := clock.NewFake()
	t.Cleanup(clk.AdvanceOnWait(time.Second))
	start := clk.Now()
	calls := 0
	err := WaitReady(context.Background(), clk, time.Second, func(context.Context) error {
		calls++
		if calls < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	require.NoError(t, err)
	assert.Equal(t, 3, calls)
	assert.Equal(t, 2*time.Second, clk.Now().Sub(start), "two intervals between three checks")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err = WaitReady(ctx, clock.Real{}, time.Millisecond, func(context.Context) error { return errors.New("never") })
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.ErrorContains(t, err, "last check: never")
}

func TestJudge(t *testing.T) {
	l := Liveness{HangAfter: 30 * time.Second}
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	slow := errors.New("context deadline exceeded")
	for _, tc := range []struct {
		name   string
		lastOK time.Time
		act    *Activity
		want   string // "" for alive
	}{
		{"answered lately", ago(29 * time.Second), nil, ""},
		{"silent, no view of the requests", ago(30 * time.Second), nil, "the health probe has not passed for 30s (last: context deadline exceeded)"},
		{"silent and idle", ago(31 * time.Second), &Activity{}, "the health probe has not passed for 31s (last: context deadline exceeded)"},
		{"silent but sending tokens", ago(5 * time.Minute), &Activity{InFlight: 64, LastProgress: ago(time.Second)}, ""},
		{"silent and stuck", ago(40 * time.Second), &Activity{InFlight: 3, LastProgress: ago(35 * time.Second)},
			"the health probe has not passed for 40s (last: context deadline exceeded), and no progress on 3 requests in flight for 35s"},
		{"answering, requests stuck", ago(time.Second), &Activity{InFlight: 3, LastProgress: ago(time.Hour)}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := l.judge(now, tc.lastOK, slow, tc.act)
			if tc.want == "" {
				assert.NoError(t, err)
			} else {
				assert.EqualError(t, err, tc.want)
			}
		})
	}
}

// watch runs a liveness watch on a fake clock that moves on whenever the watch waits, and
// returns the channel of its verdicts with the fake time each came at.
func watch(t *testing.T, probe func(context.Context) error, activity func(clk *clock.Fake) Activity) (<-chan time.Duration, time.Time) {
	t.Helper()
	clk := clock.NewFake()
	start := clk.Now()
	t.Cleanup(clk.AdvanceOnWait(5 * time.Second))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	verdicts := make(chan time.Duration, 10)
	l := Liveness{Probe: probe, Interval: 5 * time.Second, Timeout: 10 * time.Second, HangAfter: 30 * time.Second,
		OnUnhealthy: func(error) { verdicts <- clk.Now().Sub(start) }, Clock: clk}
	if activity != nil {
		l.Activity = func() Activity { return activity(clk) }
	}
	go l.Run(ctx)
	return verdicts, start
}

// TestLivenessHungEngine: an engine that stops answering, idle, is judged hung HangAfter after
// it was last seen alive, however long its probes hang.
func TestLivenessHungEngine(t *testing.T) {
	verdicts, _ := watch(t, func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }, nil)
	select {
	case at := <-verdicts:
		assert.Equal(t, 30*time.Second, at)
	case <-time.After(10 * time.Second):
		t.Fatal("a hung engine was never judged hung")
	}
}

// TestLivenessBusyEngine: an engine whose probes all hang, but whose requests make progress,
// is never judged hung; it is once the progress stops.
func TestLivenessBusyEngine(t *testing.T) {
	var judged atomic.Int32
	var mu sync.Mutex
	var last time.Time // the last progress; it stops after ten minutes of fake time
	verdicts, start := watch(t, func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }, func(clk *clock.Fake) Activity {
		mu.Lock()
		defer mu.Unlock()
		if judged.Add(1) <= 120 {
			last = clk.Now()
		}
		return Activity{InFlight: 8, LastProgress: last}
	})
	select {
	case at := <-verdicts:
		mu.Lock()
		defer mu.Unlock()
		require.Greater(t, judged.Load(), int32(120), "judged hung at %s while its requests made progress", at)
		assert.Equal(t, 30*time.Second, at-last.Sub(start), "hung 30 s after the last progress")
	case <-time.After(10 * time.Second):
		t.Fatal("a stuck engine was never judged hung")
	}
}

// TestLivenessRealTimeout: with the wall clock, a probe that never answers times out, and the
// verdict names the timeout.
func TestLivenessRealTimeout(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	unhealthy := make(chan error, 1)
	go Liveness{
		Probe: func(ctx context.Context) error {
			<-ctx.Done() // a hung engine never answers
			return ctx.Err()
		},
		Interval:    5 * time.Millisecond,
		Timeout:     10 * time.Millisecond,
		HangAfter:   50 * time.Millisecond,
		OnUnhealthy: func(err error) { unhealthy <- err },
	}.Run(ctx)
	select {
	case err := <-unhealthy:
		assert.ErrorContains(t, err, "the health probe has not passed for")
		assert.ErrorContains(t, err, "context deadline exceeded")
	case <-time.After(5 * time.Second):
		t.Fatal("a hung probe was never judged unhealthy")
	}
}
