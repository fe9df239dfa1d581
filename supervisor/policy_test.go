package supervisor

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func noJitterPolicy() *Tracker {
	p := DefaultPolicy()
	p.Jitter = 0
	p.MaxRestarts = 100
	return NewTracker(p, nil)
}

// exited is the ending of a child that exited with code.
func exited(code int) Ending { return Ending{Exit: Exit{Code: code}} }

func TestPolicyBackoffDoublesToCap(t *testing.T) {
	p := noJitterPolicy()
	clock := newFakeClock()
	var got []time.Duration
	for i := 0; i < 9; i++ {
		start := clock.Now()
		clock.Advance(time.Second) // crashes after one second each time
		d := p.Decide(exited(1), start, clock.Now())
		require.True(t, d.Restart)
		got = append(got, d.Delay)
		clock.Advance(d.Delay)
	}
	want := []time.Duration{1, 2, 4, 8, 16, 32, 60, 60, 60}
	for i := range want {
		want[i] *= time.Second
	}
	assert.Equal(t, want, got)
}

func TestPolicyResetsAfterStableRun(t *testing.T) {
	p := noJitterPolicy()
	clock := newFakeClock()
	for i := 0; i < 4; i++ {
		start := clock.Now()
		clock.Advance(time.Second)
		p.Decide(exited(1), start, clock.Now())
	}
	start := clock.Now()
	clock.Advance(5 * time.Minute)
	d := p.Decide(exited(137), start, clock.Now())
	assert.Equal(t, time.Second, d.Delay, "a run of StableAfter resets the backoff")

	start = clock.Now()
	clock.Advance(5*time.Minute - time.Millisecond)
	d = p.Decide(Ending{Requested: "liveness probes failed"}, start, clock.Now())
	assert.Equal(t, 2*time.Second, d.Delay)
}

func TestPolicyGivesUpWithinWindow(t *testing.T) {
	tests := []struct {
		name     string
		runFor   time.Duration
		attempts int
		gaveUpAt int // attempt index that gives up, -1 for never
	}{
		{"fast crash loop gives up on sixth exit", time.Second, 8, 5},
		{"restarts spread beyond the window never give up", 3 * time.Minute, 12, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			policy := DefaultPolicy()
			policy.Jitter = 0
			p := NewTracker(policy, nil)
			clock := newFakeClock()
			gave := -1
			for i := 0; i < tt.attempts; i++ {
				start := clock.Now()
				clock.Advance(tt.runFor)
				d := p.Decide(exited(1), start, clock.Now())
				if !d.Restart {
					gave = i
					assert.Contains(t, d.Reason, "gave up after 5 restarts in 10m0s; last: exit status 1")
					break
				}
				clock.Advance(d.Delay)
			}
			assert.Equal(t, tt.gaveUpAt, gave)
		})
	}
}

func TestPolicyJitterStaysWithinBounds(t *testing.T) {
	tests := []struct {
		name string
		r    float64
		want time.Duration
	}{
		{"low", 0, 900 * time.Millisecond},
		{"middle", 0.5, time.Second},
		{"high", 0.999999, 1099999800 * time.Nanosecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewTracker(DefaultPolicy(), func() float64 { return tt.r })
			now := time.Now()
			d := p.Decide(exited(1), now, now)
			assert.InDelta(t, float64(tt.want), float64(d.Delay), float64(time.Microsecond))
		})
	}
	p := NewTracker(DefaultPolicy(), func() float64 { return 0.999 })
	p.consecutive = 10
	now := time.Now()
	assert.Equal(t, time.Minute, p.Decide(exited(1), now, now).Delay, "jitter never passes the cap")
}

func TestEndingString(t *testing.T) {
	assert.Equal(t, "exit status 1", exited(1).String())
	assert.Equal(t, "exit status 137 (killed)", exited(137).String())
	assert.Equal(t, "liveness probes failed", Ending{Exit: Exit{Code: 143}, Requested: "liveness probes failed"}.String())
	d := NewTracker(DefaultPolicy(), nil).Decide(exited(137), time.Now(), time.Now())
	assert.Contains(t, d.Reason, "exit status 137 (killed); restart 1 of 5")
}
