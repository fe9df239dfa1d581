//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// idleRelease is the services' --idle-release in these tests.
const idleRelease = 20 * time.Second

// sleepyService submits a one-node job of service name that sleeps once idle for idleRelease.
func sleepyService(t *testing.T, name string, extra ...string) *job {
	agent := append([]string{"--service", name, "--idle-release", idleRelease.String()}, extra...)
	return submit(t, jobSpec{script: "service.sbatch", home: serviceHome,
		sbatch: []string{"-N", "1", "--gpus-per-node=1", "--cpus-per-task=1", "--time=10"}, agent: agent})
}

// TestServiceSleepsAndWakes: a service with --idle-release serves a request through the tunnel
// from the laptop, then, idle, releases its allocation: its job ends (COMPLETED) and the service
// sleeps. The tunnel stays up; the next request through it wakes the service (llm-agent service
// wake on the login host), is held while the new job is queued and starts, and is answered once.
// The woken job's cold start is in the service's file.
func TestServiceSleepsAndWakes(t *testing.T) {
	login := startLoginHost(t)
	name, dir := newServiceName(t)
	j := sleepyService(t, name)
	c1 := j.waitState(jobfiles.StateReady, readyTimeout)

	work := filepath.Join(login.dir, "sleep")
	require.NoError(t, os.Mkdir(work, 0o700))
	keyFile := filepath.Join(work, "key")
	localPort := 18082
	tunOut := serviceTunnel(t, login, name, localPort, keyFile, "--wake-timeout", "5m", "--remote-agent", suite.agentBin)
	at := tunOut.waitFor(t, 0, "ready", 30*time.Second)
	code, body := laptopChat(t, localPort, keyFile, c1.ServedModelName)
	require.Equal(t, 200, code, "%s", body)
	last := time.Now()

	// Idle: the job releases its allocation and the service sleeps.
	assert.Contains(t, j.waitEnded(idleRelease+2*time.Minute), "COMPLETED", "an idle release is a clean end")
	released := time.Since(last)
	f := waitService(t, dir, 30*time.Second, "asleep", func(f jobfiles.ServiceFile) bool { return f.Service.State == jobfiles.ServiceAsleep })
	assert.Contains(t, f.Service.Reason, "asleep: no request for")
	assert.True(t, strings.HasPrefix(f.Service.Job(j.id).Why, "asleep: no request for"), "the job's end: %s", f.Service.Job(j.id).Why)
	at = tunOut.waitFor(t, at, "the next request wakes it", 30*time.Second)
	status, _ := exec.Command(suite.agentBin, "status", "--service", name).CombinedOutput() // exit 1: not ready
	assert.Contains(t, string(status), "asleep since")

	// A request through the tunnel wakes it, and is answered once the woken job serves.
	woke := time.Now()
	code, body = laptopChatWithin(t, localPort, keyFile, c1.ServedModelName, 5*time.Minute)
	coldStart := time.Since(woke)
	require.Equal(t, 200, code, "the held request is answered: %s", body)
	tunOut.waitFor(t, at, "queued", time.Second)
	f, _ = readService(dir)
	require.NotEqual(t, j.id, f.Service.Current, "a new job serves")
	assert.Equal(t, jobfiles.ServiceServing, f.Service.State)
	woken := f.Service.Job(f.Service.Current)
	require.NotNil(t, woken)
	require.NotNil(t, woken.Submitted, "the woken job records when the wake queued it")
	require.NotNil(t, woken.Ready)
	queueWait, ready := woken.Started.Sub(*woken.Submitted), woken.Ready.Sub(*woken.Submitted)
	t.Logf("SLEEP: released %s after the last request (--idle-release %s); a request through the tunnel woke it: answered after %s (cold start: queued %s, ready %s after the wake's submission)",
		released.Round(100*time.Millisecond), idleRelease, coldStart.Round(100*time.Millisecond), queueWait.Round(100*time.Millisecond), ready.Round(100*time.Millisecond))
	assert.GreaterOrEqual(t, released, idleRelease, "not released before --idle-release")
	usage, err := exec.Command(suite.agentBin, "usage", "--service", name).CombinedOutput()
	require.NoError(t, err, "%s", usage)
	assert.Contains(t, string(usage), "service, 2 jobs", "the asleep job and the woken one")
	if d := os.Getenv("LLM_AGENT_SLEEP_DATA"); d != "" {
		b, _ := os.ReadFile(filepath.Join(dir, jobfiles.ConnectionFile))
		os.WriteFile(filepath.Join(d, "sleep-wake-service.json"), b, 0o644)
		os.WriteFile(filepath.Join(d, "sleep-wake-tunnel.txt"), []byte(tunOut.text()), 0o644)
		os.WriteFile(filepath.Join(d, "sleep-wake-usage.txt"), usage, 0o644)
		os.WriteFile(filepath.Join(d, "sleep-wake-summary.txt"), []byte(fmt.Sprintf("released %s after the last request (--idle-release %s); the held request answered %s after it woke the service; woken job queued %s, ready %s after the wake's submission\n",
			released.Round(100*time.Millisecond), idleRelease, coldStart.Round(100*time.Millisecond), queueWait.Round(100*time.Millisecond), ready.Round(100*time.Millisecond))), 0o644)
	}
}

// TestWakeWhileSlurmHoldsTheJob: a wake whose job Slurm does not start (it may begin only in
// ten minutes, as a full queue would hold it) shows the Python client "queued" with Slurm's
// reason, and the client gives up at its own timeout with ServiceAsleep, not a hang.
func TestWakeWhileSlurmHoldsTheJob(t *testing.T) {
	name, dir := newServiceName(t)
	j := sleepyService(t, name, "--successor-sbatch-arg=--begin=now+600")
	j.waitState(jobfiles.StateReady, readyTimeout)
	assert.Contains(t, j.waitEnded(idleRelease+2*time.Minute), "COMPLETED")
	waitService(t, dir, 30*time.Second, "asleep", func(f jobfiles.ServiceFile) bool { return f.Service.State == jobfiles.ServiceAsleep })

	venv := os.Getenv("LLM_AGENT_CLIENT_VENV")
	if venv == "" {
		venv = filepath.Join(suite.root, ".venv-client")
	}
	const wait = 25
	script := fmt.Sprintf(`
import sys, time, llm_agent_client as lac
seen = []
client = lac.connect(service=%q, max_retries=0, wake_timeout=%d, on_progress=seen.append)
start = time.monotonic()
try:
    client.models.list()
    print("ANSWERED")
except lac.ServiceAsleep as e:
    print("ASLEEP %%.1f %%s" %% (time.monotonic() - start, e))
print("PROGRESS " + " | ".join(seen))
`, name, wait)
	cmd := exec.Command(filepath.Join(venv, "bin", "python"), "-c", script)
	cmd.Env = append(os.Environ(), "HOME="+serviceHome, "LLM_AGENT_BIN="+suite.agentBin)
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(wait*time.Second + time.Minute):
		cmd.Process.Kill()
		t.Fatal("the client hung past its own timeout")
	}
	require.NoError(t, err, "%s", out)
	text := string(out)
	require.Contains(t, text, "ASLEEP", "%s", text)
	assert.Contains(t, text, "queued: job")
	assert.Contains(t, text, "(BeginTime)", "Slurm's reason reaches the client")
	var took float64
	fmt.Sscanf(text[strings.Index(text, "ASLEEP")+len("ASLEEP "):], "%f", &took)
	assert.InDelta(t, wait, took, 10, "the client's own timeout, not a hang")
	f, _ := readService(dir)
	require.NotNil(t, f.Service.Waking, "the wake's job waits in the queue")
	t.Logf("SLEEP held: the client gave up after %.1f s (wake_timeout %d s): %s", took, wait, strings.TrimSpace(text))
}

// logTime is when the first line of a job's output that holds msg was logged (hclog's time).
func logTime(t *testing.T, output, msg string) time.Time {
	t.Helper()
	b, err := os.ReadFile(output)
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, msg) {
			ts, err := time.Parse("2006-01-02T15:04:05.000Z0700", strings.Fields(line)[0])
			require.NoError(t, err, "%s", line)
			return ts
		}
	}
	t.Fatalf("no %q in %s", msg, output)
	return time.Time{}
}

// TestServiceWakeColdStart: a service of two nodes (Ray, the engine's pipeline over both) falls
// asleep and its whole job ends; llm-agent service wake --wait brings it back, and the woken
// job's cold start is told apart: the queue's wait, the agent's start to a complete Ray
// cluster, and from there to the engine ready.
func TestServiceWakeColdStart(t *testing.T) {
	name, dir := newServiceName(t)
	j := submit(t, jobSpec{script: "service.sbatch", home: serviceHome,
		sbatch: []string{"-N", "2", "--gpus-per-node=1", "--cpus-per-task=1", "--time=10"},
		agent:  []string{"--service", name, "--idle-release", idleRelease.String()}})
	j.waitState(jobfiles.StateReady, readyTimeout)
	state := j.waitEnded(idleRelease + 2*time.Minute)
	assert.Contains(t, []string{"COMPLETED", "CANCELLED"}, strings.Fields(state)[0], "the sleeping head ends its whole job: %s", state)
	waitService(t, dir, 30*time.Second, "asleep", func(f jobfiles.ServiceFile) bool { return f.Service.State == jobfiles.ServiceAsleep })
	requireNoProcesses(t, drainBound)

	out, err := exec.Command(suite.agentBin, "service", "wake", "--wait", "3m", name).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "serving")
	f, _ := readService(dir)
	w := f.Service.Job(f.Service.Current)
	require.NotNil(t, w)
	require.NotNil(t, w.Submitted)
	output := filepath.Join(j.dir, "job-"+w.JobID+".out")
	start, rayUp, ready := logTime(t, output, "head starting"), logTime(t, output, "ray cluster complete"), logTime(t, output, "engine ready")
	queue := w.Started.Sub(*w.Submitted)
	t.Logf("COLDSTART (2 nodes, Ray): queue %s, agent start to a complete Ray cluster %s, Ray to the engine ready %s, submission to ready %s",
		queue.Round(100*time.Millisecond), rayUp.Sub(start).Round(100*time.Millisecond), ready.Sub(rayUp).Round(100*time.Millisecond),
		w.Ready.Sub(*w.Submitted).Round(100*time.Millisecond))
	if d := os.Getenv("LLM_AGENT_SLEEP_DATA"); d != "" {
		b, _ := os.ReadFile(output)
		os.WriteFile(filepath.Join(d, "wake-2nodes-job.out"), b, 0o644)
		os.WriteFile(filepath.Join(d, "wake-2nodes-wake.txt"), out, 0o644)
		s, _ := os.ReadFile(filepath.Join(dir, jobfiles.ConnectionFile))
		os.WriteFile(filepath.Join(d, "wake-2nodes-service.json"), s, 0o644)
	}
}
