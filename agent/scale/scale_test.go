package scale

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var settings = Settings{MaxJobs: 3, Target: 2, Window: 30 * time.Second, Interval: 5 * time.Second,
	UpDelay: 20 * time.Second, DownDelay: 60 * time.Second, Capacity: 4}

func TestCheck(t *testing.T) {
	require.NoError(t, settings.Check())
	require.NoError(t, Settings{MaxJobs: 1}.Check(), "one job: nothing else matters")
	for name, tweak := range map[string]func(*Settings){
		"no job":              func(s *Settings) { s.MaxJobs = 0 },
		"no target":           func(s *Settings) { s.Target = 0 },
		"window under sample": func(s *Settings) { s.Window = time.Second },
		"no interval":         func(s *Settings) { s.Interval = 0 },
		"negative delay":      func(s *Settings) { s.DownDelay = -time.Second },
		"no capacity":         func(s *Settings) { s.Capacity = 0 },
	} {
		s := settings
		tweak(&s)
		assert.ErrorIs(t, s.Check(), ErrInvalid, name)
	}
}

// feed gives p a sample every interval from t0 for d, and returns the decisions that acted; the
// jobs asked for serve at once.
func feed(p *Policy, t0 time.Time, d time.Duration, s Sample, jobs *int) []Decision {
	var acted []Decision
	for at := time.Duration(0); at <= d; at += settings.Interval {
		s.At = t0.Add(at)
		dec := p.Observe(s, *jobs, 0)
		if dec.Action != Hold {
			acted = append(acted, dec)
			*jobs = dec.Desired
		}
	}
	return acted
}

// TestScalesUpAfterTheDelayOnly: a burst shorter than the up delay adds nothing; a load that
// stays above the target adds one job at a time, up to --max-jobs.
func TestScalesUpAfterTheDelayOnly(t *testing.T) {
	p, jobs, t0 := New(settings), 1, time.Unix(1000, 0)
	assert.Empty(t, feed(p, t0, 10*time.Second, Sample{Engines: 1, Waiting: 20, Running: 4}, &jobs), "a 10 s burst")
	assert.Empty(t, feed(p, t0.Add(15*time.Second), 60*time.Second, Sample{Engines: 1, Running: 2}, &jobs), "then quiet")
	acted := feed(p, t0.Add(80*time.Second), 40*time.Second, Sample{Engines: 1, Waiting: 8, Running: 4}, &jobs)
	require.Len(t, acted, 1)
	assert.Equal(t, Up, acted[0].Action)
	assert.Equal(t, 2, acted[0].Desired)
	assert.Contains(t, acted[0].Reason, "above the target 2 for 20s")

	// Two engines, still saturated: a third, then the ceiling.
	acted = feed(p, t0.Add(125*time.Second), 120*time.Second, Sample{Engines: 2, Waiting: 12, Running: 8}, &jobs)
	require.Len(t, acted, 1)
	assert.Equal(t, 3, jobs)
	d := p.Observe(Sample{At: t0.Add(250 * time.Second), Engines: 3, Waiting: 30, Running: 12}, jobs, 0)
	assert.Equal(t, Hold, d.Action)
	assert.Contains(t, d.Reason, "--max-jobs 3")
}

// TestScalesDownWhenTheOthersSuffice: a job goes only once the others could have run every
// request of the window without a queue, for the down delay; a brief lull does not.
func TestScalesDownWhenTheOthersSuffice(t *testing.T) {
	p, jobs, t0 := New(settings), 2, time.Unix(1000, 0)
	assert.Empty(t, feed(p, t0, 90*time.Second, Sample{Engines: 2, Running: 6}, &jobs), "6 in flight: one engine of 4 would queue")
	assert.Empty(t, feed(p, t0.Add(95*time.Second), 40*time.Second, Sample{Engines: 2, Running: 3}, &jobs), "a lull shorter than the down delay")
	assert.Empty(t, feed(p, t0.Add(140*time.Second), 5*time.Second, Sample{Engines: 2, Running: 5}, &jobs), "busy again")
	acted := feed(p, t0.Add(150*time.Second), 120*time.Second, Sample{Engines: 2, Running: 3}, &jobs)
	require.Len(t, acted, 1)
	assert.Equal(t, Down, acted[0].Action)
	assert.Equal(t, 1, jobs)
	assert.Contains(t, acted[0].Reason, "1 engines run them without a queue")
	assert.Empty(t, feed(p, t0.Add(300*time.Second), 300*time.Second, Sample{Engines: 1}, &jobs), "never below the serving job")
}

// TestStartingJobsHoldTheDecision: while a job asked for is queued or starting, the same load
// asks for no other, and no job is removed.
func TestStartingJobsHoldTheDecision(t *testing.T) {
	p, t0 := New(settings), time.Unix(1000, 0)
	jobs := 1
	feed(p, t0, 25*time.Second, Sample{Engines: 1, Waiting: 10, Running: 4}, &jobs)
	require.Equal(t, 2, jobs)
	for at := 30 * time.Second; at <= 5*time.Minute; at += settings.Interval {
		d := p.Observe(Sample{At: t0.Add(at), Engines: 1, Waiting: 10, Running: 4}, 2, 1)
		require.Equal(t, Hold, d.Action, "at %s", at)
		assert.Contains(t, d.Reason, "1 job(s) asked for are not serving yet")
	}
	acted := feed(p, t0.Add(5*time.Minute+5*time.Second), 25*time.Second, Sample{Engines: 2, Waiting: 10, Running: 8}, &jobs)
	require.Len(t, acted, 1, "serving, and the load still above the target: the next one")
	assert.Equal(t, 3, jobs)
	assert.Equal(t, "hold up down", Hold.String()+" "+Up.String()+" "+Down.String())
}
