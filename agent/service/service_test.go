package service

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/slurm"
)

// sched is Slurm as a job of a service sees it: its own settings and script, the jobs it
// queues (numbered from 601), and their states in the queue.
type sched struct {
	mu        sync.Mutex
	submits   [][]string
	states    map[string]slurm.QueueState
	refuse    error
	cancelled []string
	envs      [][]string
}

func (f *sched) Cancel(_ context.Context, ids ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cancelled = append(f.cancelled, ids...)
	return nil
}

func (f *sched) ShowJob(_ context.Context, id string) (slurm.JobInfo, error) {
	return slurm.JobInfo{ID: id, Name: "svc", Nodes: 1, TimeLimit: time.Hour}, nil
}

func (f *sched) BatchScript(context.Context, string) ([]byte, error) {
	return []byte("#!/bin/sh\n"), nil
}

func (f *sched) Submit(_ context.Context, args, env []string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.refuse != nil {
		return "", f.refuse
	}
	f.submits = append(f.submits, args)
	f.envs = append(f.envs, env)
	return []string{"601", "602", "603"}[len(f.submits)-1], nil
}

func (f *sched) Queue(_ context.Context, id string) (slurm.QueueState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if q, ok := f.states[id]; ok {
		return q, nil
	}
	return slurm.QueueState{State: "PENDING", Reason: "Dependency"}, nil
}

func (f *sched) set(id string, q slurm.QueueState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.states[id] = q
}

func (f *sched) submitted() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]string(nil), f.submits...)
}

// front records the handover's calls, and says how long it has been idle.
type front struct {
	mu     sync.Mutex
	closed int
	to     string
	idle   time.Duration
}

func (f *front) Idle() time.Duration { f.mu.Lock(); defer f.mu.Unlock(); return f.idle }

func (f *front) CloseConnections() { f.mu.Lock(); f.closed++; f.mu.Unlock() }
func (f *front) HandOver(url string) {
	f.mu.Lock()
	f.to = url
	f.mu.Unlock()
}

var fast = Timings{Poll: 10 * time.Millisecond, Queue: 10 * time.Millisecond, Follow: 10 * time.Millisecond,
	Linger: 10 * time.Millisecond, RetryAfter: 10 * time.Millisecond}

// options are a job's service options: job id, ending in end, for two hours from now.
func options(t *testing.T, dir, id string, end time.Time, s Scheduler) Options {
	cfg := config.Default()
	cfg.Service, cfg.For, cfg.Handover = "svc", 2*time.Hour, 15*time.Minute
	return Options{Dir: dir, Config: cfg, Job: Job{ID: id, Head: "n1", StateDir: t.TempDir(), End: end}, Scheduler: s,
		Args: []string{"--service", "svc"}, Timings: fast}
}

func read(t *testing.T, dir string) jobfiles.ServiceFile {
	t.Helper()
	f, err := jobfiles.ReadService(dir)
	require.NoError(t, err)
	return f
}

func TestDependencyAndEnvironment(t *testing.T) {
	assert.Equal(t, 225, dependencyMinutes(4*time.Hour, 15*time.Minute))
	assert.Equal(t, 1, dependencyMinutes(2*time.Minute, 60*time.Second))
	assert.Equal(t, 0, dependencyMinutes(10*time.Minute, 15*time.Minute), "a job shorter than its handover: the successor may start at once")
	assert.Equal(t, []string{"PATH=/bin", "SLURM_CONF=/etc/slurm.conf", "SBATCH_ACCOUNT=a"},
		successorEnv([]string{"PATH=/bin", "SLURM_JOB_ID=1", "SLURM_CONF=/etc/slurm.conf", "SRUN_DEBUG=1", "SBATCH_ACCOUNT=a"}))
	assert.Equal(t, Timings{Poll: time.Second, Queue: 5 * time.Second, Follow: 10 * time.Second, Linger: time.Minute, RetryAfter: 10 * time.Second},
		Timings{}.withDefaults())
}

// TestJoin: a first job starts a chain and makes the service's key; a job of the same name is
// refused while the first still runs, and may start a new chain once Slurm has it ended; the
// successor a job queued joins the chain it belongs to.
func TestJoin(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "svc")
	sch := &sched{states: map[string]slurm.QueueState{}}
	s, err := Join(context.Background(), options(t, dir, "501", time.Now().Add(time.Hour), sch))
	require.NoError(t, err)
	assert.Equal(t, "svc", s.Name())
	assert.Equal(t, dir, s.Dir())
	assert.WithinDuration(t, time.Now().Add(2*time.Hour), s.Until(), time.Minute)
	f := read(t, dir)
	assert.Equal(t, "501", f.Service.Current)
	assert.Equal(t, jobfiles.ServiceStarting, f.Service.State)
	require.Len(t, f.Service.Jobs, 1)
	assert.Equal(t, "n1", f.Service.Jobs[0].Node)
	fi, err := os.Stat(s.KeyFile())
	require.NoError(t, err, "the service's key, for all its jobs")
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	key, err := os.ReadFile(s.KeyFile())
	require.NoError(t, err)

	_, err = Join(context.Background(), options(t, dir, "777", time.Now().Add(time.Hour), sch))
	require.ErrorIs(t, err, jobfiles.ErrService, "job 501 still serves")
	assert.ErrorContains(t, err, "served by job 501")

	// The successor 501 queued joins its chain, with the chain's end.
	_, err = jobfiles.UpdateService(dir, func(f *jobfiles.ServiceFile) error {
		f.Service.Successor = &jobfiles.Successor{JobID: "601", State: "pending", Of: "501"}
		return nil
	})
	require.NoError(t, err)
	next, err := Join(context.Background(), options(t, dir, "601", time.Now().Add(time.Hour), sch))
	require.NoError(t, err)
	assert.True(t, s.Until().Equal(next.Until()), "the chain's end, not a new one")
	f = read(t, dir)
	assert.Equal(t, "running", f.Service.Successor.State)
	assert.Equal(t, "501", f.Service.Job("601").Of)
	again, err := os.ReadFile(next.KeyFile())
	require.NoError(t, err)
	assert.Equal(t, key, again, "the key is made once")

	// Once Slurm has 501 ended, another job may start a new chain; the history stays.
	sch.set("501", slurm.QueueState{State: "COMPLETED"})
	sch.set("601", slurm.QueueState{State: "CANCELLED"})
	_, err = jobfiles.UpdateService(dir, func(f *jobfiles.ServiceFile) error { f.Service.Current = "601"; return nil })
	require.NoError(t, err)
	_, err = Join(context.Background(), options(t, dir, "900", time.Now().Add(time.Hour), sch))
	require.NoError(t, err)
	f = read(t, dir)
	assert.Equal(t, "900", f.Service.Current)
	assert.Nil(t, f.Service.Successor)
	assert.Len(t, f.Service.Jobs, 3)
}

// TestMirrorAndEnd: the job's connection reaches the service's file while it is the current
// job, a ready successor takes the service over, and the job's end says what the service does
// now.
func TestMirrorAndEnd(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "svc")
	sch := &sched{states: map[string]slurm.QueueState{}}
	s, err := Join(context.Background(), options(t, dir, "501", time.Now().Add(time.Hour), sch))
	require.NoError(t, err)
	ready := time.Now()
	s.Mirror(jobfiles.Connection{JobID: "501", State: jobfiles.StateReady, ReadyAt: &ready, Tunnel: "llm-agent tunnel --login u@l 501"})
	f := read(t, dir)
	assert.Equal(t, jobfiles.ServiceServing, f.Service.State)
	assert.Equal(t, "llm-agent tunnel --login u@l --service svc", f.Tunnel, "the laptop's command follows the service")
	require.NotNil(t, f.Service.Job("501").Ready)

	end := func(conn jobfiles.ServiceState, reason string, next *jobfiles.Successor) jobfiles.ServiceFile {
		t.Helper()
		_, err := jobfiles.UpdateService(dir, func(f *jobfiles.ServiceFile) error {
			f.Service.Current, f.Service.Ended, f.Service.Successor = "501", false, next
			return nil
		})
		require.NoError(t, err)
		s.End(jobfiles.Connection{JobID: "501", State: conn, Reason: reason}, "received a stop signal")
		return read(t, dir)
	}
	f = end(jobfiles.StateStopped, "", &jobfiles.Successor{JobID: "601", State: "pending", Reason: "Dependency"})
	assert.Equal(t, jobfiles.ServiceWaiting, f.Service.State)
	assert.Equal(t, "job 601 is pending (Dependency)", f.Service.Reason)
	assert.Equal(t, jobfiles.StateStarting, f.State, "a client waits: the service is not over")
	assert.False(t, f.Service.Ended)
	assert.NotNil(t, f.Service.Job("501").Ended)

	f = end(jobfiles.StateStopped, "", &jobfiles.Successor{JobID: "601", State: "failed", Attempts: 3, Reason: "sbatch: refused"})
	assert.Equal(t, jobfiles.ServiceFailed, f.Service.State)
	assert.Equal(t, "the successor could not start after 3 attempts: sbatch: refused", f.Service.Reason)
	f = end(jobfiles.StateFailed, "engine gave up", nil)
	assert.Equal(t, "job 501 failed with no successor queued: engine gave up", f.Service.Reason)
	f = end(jobfiles.StateStopped, "", nil)
	assert.Equal(t, jobfiles.ServiceStopped, f.Service.State)
	assert.Equal(t, "job 501 ended with no successor queued: received a stop signal", f.Service.Reason)
	assert.True(t, f.Service.Ended)

	// Another job's connection does not reach the file until it is ready.
	other, err := Join(context.Background(), options(t, dir, "900", time.Now().Add(time.Hour), sch))
	require.NoError(t, err)
	sch.set("900", slurm.QueueState{State: "RUNNING"})
	_, err = jobfiles.UpdateService(dir, func(f *jobfiles.ServiceFile) error { f.Service.Current = "501"; return nil })
	require.NoError(t, err)
	other.Mirror(jobfiles.Connection{JobID: "900", State: jobfiles.StateStarting})
	assert.Equal(t, "501", read(t, dir).Service.Current)
	other.Mirror(jobfiles.Connection{JobID: "900", State: jobfiles.StateReady})
	assert.Equal(t, "900", read(t, dir).Service.Current, "ready: it takes the service over")
}

// TestWatchQueuesAndRetriesTheSuccessor: a ready job whose limit comes before the service's end
// queues its successor with the dependency, follows it in the queue, queues it again when it
// failed, and stops retrying past --successor-retries.
func TestWatchQueuesAndRetriesTheSuccessor(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "svc")
	sch := &sched{states: map[string]slurm.QueueState{}}
	o := options(t, dir, "501", time.Now().Add(time.Hour), sch)
	o.Config.SuccessorRetries = 1
	o.Config.SuccessorSbatch = []string{"--qos=long"}
	s, err := Join(context.Background(), o)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan string, 1)
	go func() { done <- s.Watch(ctx, func() bool { return true }, nil) }()
	waitFor := func(what string, cond func(f jobfiles.ServiceFile) bool) jobfiles.ServiceFile {
		t.Helper()
		var f jobfiles.ServiceFile
		require.Eventually(t, func() bool { f = read(t, dir); return cond(f) }, 10*time.Second, 5*time.Millisecond, what)
		return f
	}
	f := waitFor("queued", func(f jobfiles.ServiceFile) bool {
		return f.Service.Successor != nil && f.Service.Successor.Reason == "Dependency"
	})
	assert.Equal(t, "601", f.Service.Successor.JobID)
	assert.Equal(t, "pending", f.Service.Successor.State)
	assert.Equal(t, "after:501+45", f.Service.Successor.Dependency)
	args := sch.submitted()[0]
	assert.Contains(t, args, "--dependency=after:501+45")
	assert.Contains(t, args, "--qos=long")
	assert.Equal(t, []string{"--service", "svc"}, args[len(args)-2:], "the job's own options, after the script")
	_, err = os.Stat(filepath.Join(o.Job.StateDir, "successor.sbatch"))
	assert.ErrorIs(t, err, os.ErrNotExist, "the script's copy goes once queued")

	sch.set("601", slurm.QueueState{State: "FAILED"})
	waitFor("queued again", func(f jobfiles.ServiceFile) bool { return f.Service.Successor.JobID == "602" })
	sch.set("602", slurm.QueueState{State: "TIMEOUT"})
	f = waitFor("retries spent", func(f jobfiles.ServiceFile) bool {
		return f.Service.Successor.JobID == "602" && f.Service.Successor.State == "failed"
	})
	assert.Equal(t, "job 602 ended (TIMEOUT) before it was ready", f.Service.Successor.Reason)
	assert.Equal(t, 2, f.Service.Successor.Attempts)
	cancel()
	assert.Empty(t, <-done, "stopped from outside: no reason of its own")
	assert.Len(t, sch.submitted(), 2, "no third attempt")
}

// TestWatchRefusedSubmission: a successor sbatch refuses is recorded failed, with sbatch's words.
func TestWatchRefusedSubmission(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "svc")
	sch := &sched{states: map[string]slurm.QueueState{}, refuse: errors.New("sbatch: error: QOSMaxSubmitJobPerUserLimit")}
	o := options(t, dir, "501", time.Now().Add(time.Hour), sch)
	o.Config.SuccessorRetries = 0
	s, err := Join(context.Background(), o)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Watch(ctx, func() bool { return true }, nil)
	require.Eventually(t, func() bool {
		n := read(t, dir).Service.Successor
		return n != nil && n.State == "failed" && n.Reason == "sbatch: error: QOSMaxSubmitJobPerUserLimit"
	}, 10*time.Second, 5*time.Millisecond)
}

// TestWatchHandsOver: once the successor this job queued serves, the job closes its clients'
// connections, answers with the successor's address, and ends.
func TestWatchHandsOver(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "svc")
	sch := &sched{states: map[string]slurm.QueueState{}}
	s, err := Join(context.Background(), options(t, dir, "501", time.Now().Add(time.Hour), sch))
	require.NoError(t, err)
	_, err = jobfiles.UpdateService(dir, func(f *jobfiles.ServiceFile) error {
		f.Service.Jobs = append(f.Service.Jobs, jobfiles.ServiceJob{JobID: "601", Of: "501"})
		f.Service.Current = "601"
		f.Connection = jobfiles.Connection{JobID: "601", State: jobfiles.StateReady, BaseURL: "http://n2:8000/v1"}
		return nil
	})
	require.NoError(t, err)
	fr := &front{}
	assert.Equal(t, "handed over to job 601", s.Watch(context.Background(), func() bool { return true }, fr))
	assert.Equal(t, 1, fr.closed)
	assert.Equal(t, "http://n2:8000/v1", fr.to)
}

// TestWatchEndsBeforeTheLimit: a job whose successor is not ready stops before its time limit;
// a job whose service's time is over stops then.
func TestWatchEndsBeforeTheLimit(t *testing.T) {
	sch := &sched{states: map[string]slurm.QueueState{}}
	dir := filepath.Join(t.TempDir(), "svc")
	o := options(t, dir, "501", time.Now().Add(time.Second), sch) // the limit inside the drain's margin
	s, err := Join(context.Background(), o)
	require.NoError(t, err)
	assert.Equal(t, "the time limit is near and the successor is not ready", s.Watch(context.Background(), func() bool { return false }, nil))

	dir = filepath.Join(t.TempDir(), "svc")
	o = options(t, dir, "502", time.Time{}, sch)
	o.Config.For = 50 * time.Millisecond
	s, err = Join(context.Background(), o)
	require.NoError(t, err)
	assert.Equal(t, "the service's time is over", s.Watch(context.Background(), func() bool { return true }, nil))
}
