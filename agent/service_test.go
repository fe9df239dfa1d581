package agent

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/gateway"
	"github.com/llm-agent/llm-agent/agent/service"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/slurm"
)

func TestServiceRunArgs(t *testing.T) {
	assert.Equal(t, []string{"--model", "m"}, runArgs([]string{"/bin/llm-agent", "run", "--model", "m"}))
}

// fakeScheduler is Slurm as a job of a service sees it: its own settings, its script, and the
// successors it queues, which wait for their dependency.
type fakeScheduler struct {
	mu      sync.Mutex
	next    int
	submits [][]string
	// failed are the jobs that end before they are ready.
	failed map[string]bool
	// cancel, if set, hears the jobs scancel is asked to cancel.
	cancel func(ids []string)
}

func (f *fakeScheduler) Cancel(_ context.Context, ids ...string) error {
	if f.cancel != nil {
		f.cancel(ids)
	}
	return nil
}

func (f *fakeScheduler) ShowJob(_ context.Context, id string) (slurm.JobInfo, error) {
	return slurm.JobInfo{ID: id, Name: "svc", Nodes: 1, TimeLimit: time.Hour, StdOut: "/out/job-" + id + ".out"}, nil
}

func (f *fakeScheduler) BatchScript(context.Context, string) ([]byte, error) {
	return []byte("#!/bin/sh\nexec llm-agent run \"$@\"\n"), nil
}

func (f *fakeScheduler) Submit(_ context.Context, args, _ []string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.submits = append(f.submits, args)
	f.next++
	return fmt.Sprint(600 + f.next), nil
}

func (f *fakeScheduler) Queue(_ context.Context, id string) (slurm.QueueState, error) {
	if f.failed[id] {
		return slurm.QueueState{State: "FAILED", Reason: "NonZeroExitCode"}, nil
	}
	return slurm.QueueState{State: "PENDING", Reason: "Dependency"}, nil
}

func (f *fakeScheduler) submitted() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.submits)
}

// fastService are a service's timings short enough for a unit test.
var fastService = service.Timings{Poll: 100 * time.Millisecond, Queue: 100 * time.Millisecond, Follow: 100 * time.Millisecond,
	Linger: 100 * time.Millisecond, RetryAfter: 100 * time.Millisecond}

// serviceJob starts job of service svc in home, with Slurm as sched.
func serviceJob(t *testing.T, home, job string, sched service.Scheduler, tweak func(c *config.Config)) (*agentRun, string) {
	state := filepath.Join(t.TempDir(), "state")
	cfg := testConfig(t, state)
	cfg.Service, cfg.For, cfg.Handover = "svc", 2*time.Hour, 15*time.Minute
	if tweak != nil {
		tweak(&cfg)
	}
	env := map[string]string{"SLURM_JOB_ID": job, "SLURM_JOB_NODELIST": "node1", "SLURM_NODEID": "0", "SLURM_GPUS_ON_NODE": "1",
		"SLURM_JOB_END_TIME": fmt.Sprint(time.Now().Add(time.Hour).Unix())}
	deps := testDeps(t, env, "node1")
	env["HOME"] = home
	deps.Scheduler, deps.Args, deps.ServiceTimings = sched, []string{"--model", cfg.Model, "--service", "svc", "--for", "2h"}, fastService
	return startAgent(cfg, deps), state
}

// waitServiceFile waits until cond holds on the service's file in dir.
func waitServiceFile(t *testing.T, dir, what string, cond func(f jobfiles.ServiceFile) bool) jobfiles.ServiceFile {
	t.Helper()
	var f jobfiles.ServiceFile
	require.Eventually(t, func() bool {
		var err error
		f, err = jobfiles.ReadService(dir)
		return err == nil && cond(f)
	}, 20*time.Second, 20*time.Millisecond, "the service never showed %s; last: %+v", what, f.Service)
	return f
}

// TestServiceRetriesAFailedSuccessor: a successor that ends before it is ready is queued again,
// up to the retries; past them the file keeps why.
func TestServiceRetriesAFailedSuccessor(t *testing.T) {
	home := t.TempDir()
	sched := &fakeScheduler{failed: map[string]bool{"601": true, "602": true}}
	run, _ := serviceJob(t, home, "501", sched, func(c *config.Config) { c.SuccessorRetries = 1 })
	dir := jobfiles.ServiceDir(home, "svc")
	f := waitServiceFile(t, dir, "the retries spent", func(f jobfiles.ServiceFile) bool {
		n := f.Service.Successor
		return n != nil && n.JobID == "602" && n.State == "failed"
	})
	assert.Equal(t, 2, f.Service.Successor.Attempts)
	assert.Equal(t, "job 602 ended (FAILED) before it was ready", f.Service.Successor.Reason)
	require.NoError(t, run.stop(t))
	assert.Len(t, sched.submitted(), 2, "no third attempt")
	f, err := jobfiles.ReadService(dir)
	require.NoError(t, err)
	assert.Equal(t, jobfiles.ServiceFailed, f.Service.State)
	assert.True(t, f.Service.Ended)
	assert.Contains(t, f.Service.Reason, "the successor could not start after 2 attempts")
}

// TestServiceHandsOver runs a service's job and the successor it queued: the job queues it
// with the dependency that lets it start a handover before the time limit; the successor
// takes the service's file over once ready; the job hands over and ends cleanly; when the
// successor ends with its own successor queued, the file says the service waits for it.
func TestServiceHandsOver(t *testing.T) {
	home := t.TempDir()
	sched := &fakeScheduler{}
	start := func(job string) (*agentRun, string) { return serviceJob(t, home, job, sched, nil) }
	dir := jobfiles.ServiceDir(home, "svc")
	waitService := func(what string, cond func(f jobfiles.ServiceFile) bool) jobfiles.ServiceFile {
		t.Helper()
		return waitServiceFile(t, dir, what, cond)
	}

	first, firstState := start("501")
	f := waitService("the successor queued", func(f jobfiles.ServiceFile) bool {
		return f.Service.Successor != nil && f.Service.Successor.Reason == "Dependency"
	})
	assert.Equal(t, "501", f.JobID)
	assert.True(t, strings.HasSuffix(f.Tunnel, "--service svc"), "the laptop's command follows the service: %s", f.Tunnel)
	assert.Equal(t, jobfiles.ServiceServing, f.Service.State)
	assert.Equal(t, "601", f.Service.Successor.JobID)
	assert.Equal(t, "pending", f.Service.Successor.State)
	require.Len(t, sched.submitted(), 1)
	args := sched.submitted()[0]
	assert.Contains(t, args, "--dependency=after:501+45", "an hour's limit less 15 minutes")
	assert.Contains(t, args, "--output=/out/job-%j.out")
	assert.Equal(t, []string{"--service", "svc", "--for", "2h"}, args[len(args)-4:], "the job's own options, after the script")
	assert.True(t, strings.HasSuffix(args[len(args)-7], "successor.sbatch"), "the script: %v", args)
	var groups []jobfiles.TargetGroup
	require.NoError(t, jobfiles.ReadJSON(filepath.Join(firstState, jobfiles.TargetsFile), &groups))
	require.NotEmpty(t, groups)
	for _, g := range groups {
		assert.Equal(t, "svc", g.Labels["service"], "Prometheus's series carry the service's name across its jobs")
	}
	key := f.APIKeyFile

	second, _ := start("601")
	f = waitService("the successor serving", func(f jobfiles.ServiceFile) bool { return f.JobID == "601" && f.State == jobfiles.StateReady })
	assert.Equal(t, "601", f.Service.Current)
	require.NotNil(t, f.Service.Until)
	assert.Equal(t, "501", f.Service.Job("601").Of)

	select {
	case err := <-first.done:
		require.NoError(t, err, "the job ends cleanly once it has handed over")
	case <-time.After(20 * time.Second):
		t.Fatal("the job did not end after its handover")
	}
	c := waitConnState(t, firstState, jobfiles.StateStopped, time.Second)
	assert.Equal(t, "handed over to job 601", c.Reason)
	f, err := jobfiles.ReadService(dir)
	require.NoError(t, err)
	assert.Equal(t, "handed over to job 601", f.Service.Job("501").Why)
	c2, err := jobfiles.ReadConnection(filepath.Join(f.Service.Job("601").StateDir, jobfiles.ConnectionFile))
	require.NoError(t, err)
	assert.NotEqual(t, key, "", "the key file is named")
	assert.Equal(t, readKey(t, key), readKey(t, c2.APIKeyFile), "both jobs serve with the service's key")

	f = waitService("the successor's successor", func(f jobfiles.ServiceFile) bool {
		return f.Service.Successor != nil && f.Service.Successor.Of == "601"
	})
	require.NoError(t, second.stop(t))
	f = waitService("waiting", func(f jobfiles.ServiceFile) bool { return f.Service.State == jobfiles.ServiceWaiting })
	assert.Equal(t, jobfiles.StateStarting, f.State, "a client waits: the service is not over")
	assert.Contains(t, f.Reason, "job 602 is pending (Dependency)")
	assert.False(t, f.Service.Ended)
}

func readKey(t *testing.T, path string) string {
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return strings.TrimSpace(string(b))
}

// TestServiceSleepsWhenIdle: a service's job that served and then saw no request with a valid
// key for --idle-release drains and ends cleanly; a request without a key keeps nothing awake.
// The service's file says asleep, and the record a wake queues the job again from is saved.
func TestServiceSleepsWhenIdle(t *testing.T) {
	home := t.TempDir()
	sched := &fakeScheduler{}
	run, state := serviceJob(t, home, "501", sched, func(c *config.Config) { c.IdleRelease = config.MinIdleRelease })
	c := waitConnState(t, state, jobfiles.StateReady, 20*time.Second)
	began := time.Now()
	key := readKey(t, c.APIKeyFile)
	status, _ := getWithKey(t, c.BaseURL+"/models", key)
	require.Equal(t, 200, status)
	asked := time.Now()
	done := time.NewTicker(2 * time.Second)
	defer done.Stop()
	var err error
	waiting := true
	for waiting {
		select {
		case err = <-run.done:
			waiting = false
		case <-done.C:
			status, _ := getWithKey(t, c.BaseURL+"/models", "not-a-key") // no demand
			require.Equal(t, 401, status)
		case <-time.After(3 * config.MinIdleRelease):
			t.Fatal("the idle job did not end")
		}
	}
	require.NoError(t, err, "an idle release is a clean end")
	assert.GreaterOrEqual(t, time.Since(asked), config.MinIdleRelease, "not before --idle-release after the last request")
	t.Logf("ready to released: %s", time.Since(began).Round(time.Millisecond))
	dir := jobfiles.ServiceDir(home, "svc")
	f, err := jobfiles.ReadService(dir)
	require.NoError(t, err)
	assert.Equal(t, jobfiles.ServiceAsleep, f.Service.State)
	assert.Contains(t, f.Service.Reason, "asleep: no request for")
	assert.False(t, f.Service.Ended)
	assert.Equal(t, jobfiles.StateStopped, f.State)
	rec, err := jobfiles.ReadWakeRecord(dir)
	require.NoError(t, err)
	assert.Equal(t, []string{"--model", rec.AgentArgs[1], "--service", "svc", "--for", "2h"}, rec.AgentArgs)
	assert.FileExists(t, filepath.Join(dir, jobfiles.WakeScriptFile))
}

// TestServiceAddsJobsUnderLoad: a serving job with --max-jobs 2 whose engine has requests
// waiting adds a job (queued with --extra-of); the added job serves behind a gateway that opens
// to the service's replica key alone, and joins the serving job's rotation; when the load is
// gone, it leaves the rotation and is cancelled, and the service's file drops it.
func TestServiceAddsJobsUnderLoad(t *testing.T) {
	home := t.TempDir()
	waiting := filepath.Join(t.TempDir(), "waiting")
	require.NoError(t, os.WriteFile(waiting, []byte("6"), 0o644))
	t.Setenv("FAKE_VLLM_WAITING", waiting)
	cancelled := make(chan []string, 4)
	sched := &fakeScheduler{cancel: func(ids []string) { cancelled <- ids }}
	scaling := func(c *config.Config) {
		c.MaxJobs, c.ScaleTarget, c.ScaleInterval, c.ScaleWindow = 2, 1, 100*time.Millisecond, 300*time.Millisecond
		// A down delay past two rounds of the head's watch over the added jobs: the load it samples
		// must see the added job's engine in the gateway's rotation, not only in the first round.
		c.ScaleUpDelay, c.ScaleDownDelay, c.Grace = 0, 3*time.Second, 2*time.Second
	}
	serving, state := serviceJob(t, home, "501", sched, scaling)
	c := waitConnState(t, state, jobfiles.StateReady, 20*time.Second)
	dir := jobfiles.ServiceDir(home, "svc")
	waitServiceFile(t, dir, "a job added", func(f jobfiles.ServiceFile) bool { return len(f.Service.Extras) == 1 })
	args := sched.submitted()[0]
	require.Equal(t, []string{"--extra-of", "501"}, args[len(args)-2:])

	extra, extraState := serviceJob(t, home, "601", sched, func(c *config.Config) { scaling(c); c.ExtraOf = "501" })
	ec := waitConnState(t, extraState, jobfiles.StateReady, 20*time.Second)
	status, _ := getWithKey(t, ec.BaseURL+"/models", readKey(t, c.APIKeyFile))
	assert.Equal(t, 401, status, "the added job opens to the service's replica key alone")
	waitServiceFile(t, dir, "the added job ready", func(f jobfiles.ServiceFile) bool {
		return len(f.Service.Extras) == 1 && f.Service.Extras[0].State == jobfiles.ExtraReady
	})
	key := readKey(t, c.APIKeyFile)
	require.Eventually(t, func() bool {
		req, _ := http.NewRequest(http.MethodGet, c.BaseURL+"/models", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.Header.Get(gateway.ReplicaHeader) == "job 601"
	}, 20*time.Second, 50*time.Millisecond, "a request answered by the added job, through the serving job's gateway")

	require.NoError(t, os.WriteFile(waiting, []byte("0"), 0o644))
	select {
	case ids := <-cancelled:
		assert.Equal(t, []string{"601"}, ids)
	case <-time.After(20 * time.Second):
		t.Fatal("the added job was never cancelled")
	}
	require.NoError(t, extra.stop(t), "a cancelled added job drains cleanly")
	f := waitServiceFile(t, dir, "the added job dropped", func(f jobfiles.ServiceFile) bool { return len(f.Service.Extras) == 0 })
	assert.Equal(t, "501", f.Service.Current)
	require.NoError(t, serving.stop(t))
}
