package healthcheck

import (
	"context"
	"errors"
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

func TestLivenessNeedsSeveralFailuresInARow(t *testing.T) {
	clk := clock.NewFake()
	t.Cleanup(clk.AdvanceOnWait(10 * time.Second))
	// Probe outcomes in order; the engine is unhealthy only after 3 failures in a row.
	outcomes := []bool{false, false, true, false, false, false, true, true}
	var i atomic.Int32
	unhealthy := make(chan error, 10)
	probed := make(chan struct{}, 100)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Liveness{
		Probe: func(context.Context) error {
			n := int(i.Add(1)) - 1
			if n >= len(outcomes) || outcomes[n] {
				return nil
			}
			return errors.New("slow")
		},
		Interval:    10 * time.Second,
		Timeout:     time.Second,
		Failures:    3,
		OnUnhealthy: func(err error) { unhealthy <- err },
		OnProbe:     func(error) { probed <- struct{}{} },
		Clock:       clk,
	}.Run(ctx)
	for n := 0; n < len(outcomes)+2; n++ {
		<-probed
	}
	cancel()
	require.Len(t, unhealthy, 1, "two failures then a success reset the count")
	err := <-unhealthy
	assert.ErrorContains(t, err, "3 liveness probes failed in a row; last: slow")
}

func TestLivenessProbeTimeout(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	unhealthy := make(chan error, 1)
	go Liveness{
		Probe: func(ctx context.Context) error {
			<-ctx.Done() // a hung engine never answers
			return ctx.Err()
		},
		Interval:    time.Millisecond,
		Timeout:     10 * time.Millisecond,
		Failures:    2,
		OnUnhealthy: func(err error) { unhealthy <- err },
	}.Run(ctx)
	select {
	case err := <-unhealthy:
		assert.ErrorIs(t, err, context.DeadlineExceeded)
	case <-time.After(5 * time.Second):
		t.Fatal("a hung probe was never judged unhealthy")
	}
}
