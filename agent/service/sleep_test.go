package service

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/slurm"
)

// TestIdleJobSleeps: a job of a service that has served and then seen no request for
// --idle-release ends; it saves what a wake needs, cancels the successor it queued, and the
// service's file says asleep, with the time and the reason. A job that was never ready, or
// with requests coming, keeps serving.
func TestIdleJobSleeps(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "svc")
	sch := &sched{states: map[string]slurm.QueueState{}}
	o := options(t, dir, "501", time.Now().Add(90*time.Minute), sch) // long enough to queue a successor
	o.Config.IdleRelease = 30 * time.Second
	s, err := Join(context.Background(), o)
	require.NoError(t, err)
	s.Mirror(jobfiles.Connection{JobID: "501", State: jobfiles.StateReady})

	busy := &front{idle: 29 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	assert.Empty(t, s.Watch(ctx, func() bool { return false }, &front{idle: time.Hour}), "never ready: nothing to release")
	ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	assert.Empty(t, s.Watch(ctx2, func() bool { return true }, busy), "a request within the last 30s")
	require.Len(t, sch.submitted(), 1, "the successor was queued while it served")

	busy.mu.Lock()
	busy.idle = 31 * time.Second
	busy.mu.Unlock()
	why := s.Watch(context.Background(), func() bool { return true }, busy)
	assert.Equal(t, "asleep: no request for 31s (--idle-release 30s)", why)
	assert.Equal(t, []string{"601"}, sch.cancelled, "the queued successor would wake the service by itself")

	rec, err := jobfiles.ReadWakeRecord(dir)
	require.NoError(t, err)
	assert.Equal(t, "501", rec.Job)
	assert.Equal(t, []string{"--service", "svc"}, rec.AgentArgs)
	assert.Contains(t, rec.Args, "--time=0-01:00:00")
	fi, err := os.Stat(filepath.Join(dir, jobfiles.WakeScriptFile))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm())

	s.End(jobfiles.Connection{JobID: "501", State: jobfiles.StateStopped}, why)
	f := read(t, dir)
	assert.Equal(t, jobfiles.ServiceAsleep, f.Service.State)
	assert.Equal(t, why, f.Service.Reason)
	assert.NotNil(t, f.Service.Asleep)
	assert.False(t, f.Service.Ended, "asleep is not ended: a wake goes on with the chain")
	assert.Nil(t, f.Service.Successor)
}

// TestWokenJobJoins: the job a wake queued joins the sleeping service as its current job, keeps
// the chain's end, and its cold start runs from the wake's submission.
func TestWokenJobJoins(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "svc")
	sch := &sched{states: map[string]slurm.QueueState{"501": {State: "COMPLETED"}}}
	s, err := Join(context.Background(), options(t, dir, "501", time.Time{}, sch))
	require.NoError(t, err)
	until := read(t, dir).Service.Until
	require.NotNil(t, until)
	s.asleep.Store(true)
	s.End(jobfiles.Connection{JobID: "501", State: jobfiles.StateStopped}, "asleep: no request for 1h0m0s")
	submitted := time.Now().Add(-time.Minute).UTC().Truncate(time.Second)
	_, err = jobfiles.UpdateService(dir, func(f *jobfiles.ServiceFile) error {
		f.Service.State, f.Service.Waking = jobfiles.ServiceWaking, &jobfiles.Wake{JobID: "777", Submitted: submitted}
		return nil
	})
	require.NoError(t, err)

	o := options(t, dir, "777", time.Time{}, sch)
	o.Config.For = 5 * time.Hour // the woken job's own options do not move the chain's end
	w, err := Join(context.Background(), o)
	require.NoError(t, err)
	f := read(t, dir)
	assert.Equal(t, "777", f.Service.Current)
	assert.Equal(t, jobfiles.ServiceWaking, f.Service.State)
	assert.Nil(t, f.Service.Asleep)
	assert.Equal(t, *until, *f.Service.Until)
	j := f.Service.Job("777")
	require.NotNil(t, j)
	require.NotNil(t, j.Submitted)
	assert.Equal(t, submitted, *j.Submitted)

	ready := time.Now().UTC()
	w.Mirror(jobfiles.Connection{JobID: "777", State: jobfiles.StateReady, ReadyAt: &ready})
	f = read(t, dir)
	assert.Equal(t, jobfiles.ServiceServing, f.Service.State)
	assert.Nil(t, f.Service.Waking)
}

// TestWake: a wake queues the sleeping service's job from its record, once; a second wake while
// that job is queued queues nothing, and neither does a wake of a service that serves. A wake
// of a service that ended, or of a folder with no service, is refused.
func TestWake(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "svc")
	sch := &sched{states: map[string]slurm.QueueState{}}
	o := options(t, dir, "501", time.Now().Add(90*time.Minute), sch)
	s, err := Join(context.Background(), o)
	require.NoError(t, err)
	now := time.Now()

	w, err := Wake(context.Background(), dir, sch, nil, "test", now)
	require.NoError(t, err)
	assert.Equal(t, Woken{JobID: "501", State: jobfiles.ServiceStarting}, w, "awake already: nothing queued")

	t.Setenv("LLM_AGENT_GRACE", "10s") // from the job's submission: kept for the wake
	require.NoError(t, s.saveWake(context.Background()))
	s.asleep.Store(true)
	s.End(jobfiles.Connection{JobID: "501", State: jobfiles.StateStopped}, "asleep")
	w, err = Wake(context.Background(), dir, sch, []string{"SLURM_JOB_ID=9", "HOME=/h"}, "test", now)
	require.NoError(t, err)
	assert.Equal(t, Woken{JobID: "601", Queued: true, State: jobfiles.ServiceWaking}, w)
	subs := sch.submitted()
	require.Len(t, subs, 1)
	assert.Equal(t, filepath.Join(dir, jobfiles.WakeScriptFile), subs[0][len(subs[0])-3])
	assert.Equal(t, []string{"--service", "svc"}, subs[0][len(subs[0])-2:])
	env := sch.envs[0]
	assert.Equal(t, "HOME=/h", env[0], "the waker's environment")
	assert.NotContains(t, env, "SLURM_JOB_ID=9", "less Slurm's")
	assert.Contains(t, env, "LLM_AGENT_GRACE=10s", "and the job's own settings")
	f := read(t, dir)
	require.NotNil(t, f.Service.Waking)
	assert.Equal(t, "601", f.Service.Waking.JobID)
	assert.Equal(t, "job 601 queued by test", f.Service.Reason)

	w, err = Wake(context.Background(), dir, sch, nil, "another client", now)
	require.NoError(t, err)
	assert.Equal(t, Woken{JobID: "601", State: jobfiles.ServiceWaking}, w, "queued already")
	sch.set("601", slurm.QueueState{State: "FAILED"})
	w, err = Wake(context.Background(), dir, sch, nil, "test", now)
	require.NoError(t, err)
	assert.Equal(t, "602", w.JobID, "the woken job failed before it served: queued again")

	_, err = jobfiles.UpdateService(dir, func(f *jobfiles.ServiceFile) error { f.Service.Ended = true; return nil })
	require.NoError(t, err)
	_, err = Wake(context.Background(), dir, sch, nil, "test", now)
	assert.ErrorIs(t, err, ErrCannotWake)
	_, err = Wake(context.Background(), filepath.Join(t.TempDir(), "none"), sch, nil, "test", now)
	assert.ErrorIs(t, err, ErrCannotWake)
}

// TestColdStartMetrics: the job a wake queued exports its cold start once ready; any job its
// service's --idle-release.
func TestColdStartMetrics(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "svc")
	sch := &sched{states: map[string]slurm.QueueState{"501": {State: "COMPLETED"}}}
	o := options(t, dir, "501", time.Time{}, sch)
	o.Config.IdleRelease = 30 * time.Minute
	s, err := Join(context.Background(), o)
	require.NoError(t, err)
	want := `
# HELP llm_agent_service_idle_release_seconds The service's --idle-release: how long with no request before its job releases the allocation (0: never).
# TYPE llm_agent_service_idle_release_seconds gauge
llm_agent_service_idle_release_seconds{job="501",node="n1",service="svc"} 1800
`
	require.NoError(t, testutil.CollectAndCompare(s.Collector("n1", "501"), strings.NewReader(want)))

	s.asleep.Store(true)
	s.End(jobfiles.Connection{JobID: "501", State: jobfiles.StateStopped}, "asleep")
	submitted := time.Now().Add(-time.Minute)
	_, err = jobfiles.UpdateService(dir, func(f *jobfiles.ServiceFile) error {
		f.Service.Waking = &jobfiles.Wake{JobID: "777", Submitted: submitted}
		return nil
	})
	require.NoError(t, err)
	w, err := Join(context.Background(), options(t, dir, "777", time.Time{}, sch))
	require.NoError(t, err)
	ready := time.Now()
	w.Mirror(jobfiles.Connection{JobID: "777", State: jobfiles.StateReady, ReadyAt: &ready})
	n, err := testutil.GatherAndCount(registry(t, w.Collector("n1", "777")), "llm_agent_service_wake_seconds")
	require.NoError(t, err)
	assert.Equal(t, 2, n, "until running, until ready")
	mfs, err := registry(t, w.Collector("n1", "777")).Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if h := m.GetHistogram(); h != nil && m.GetLabel()[len(m.GetLabel())-1].GetValue() == "ready" {
				assert.InDelta(t, time.Minute.Seconds(), h.GetSampleSum(), 2)
				assert.Equal(t, uint64(1), h.GetSampleCount())
			}
		}
	}
}

func registry(t *testing.T, c prometheus.Collector) *prometheus.Registry {
	r := prometheus.NewRegistry()
	require.NoError(t, r.Register(c))
	return r
}
