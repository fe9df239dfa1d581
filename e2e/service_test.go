//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// A service of 2-minute jobs with a 60 s handover: its jobs run as root with home /root, where
// the login host's ssh lands.
const serviceHome = "/root"

func serviceJob(t *testing.T, name string, extra ...string) *job {
	agent := append([]string{"--service", name, "--handover", "60s"}, extra...)
	return submit(t, jobSpec{script: "service.sbatch", home: serviceHome,
		sbatch: []string{"-N", "1", "--gpus-per-node=1", "--cpus-per-task=1", "--time=2"}, agent: agent})
}

func newServiceName(t *testing.T) (string, string) {
	name := fmt.Sprintf("e2e-%d", rand.IntN(1e9))
	dir := jobfiles.ServiceDir(serviceHome, name)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, jobfiles.ConnectionFile))
			t.Logf("service file:\n%s", b)
		}
		// Whatever happened, nothing of the service stays in the queue.
		exec.Command(suite.agentBin, "stop", "--service", name, "--wait", "90s").Run()
		os.RemoveAll(dir)
	})
	return name, dir
}

func readService(dir string) (jobfiles.ServiceFile, bool) {
	f, err := jobfiles.ReadService(dir)
	return f, err == nil
}

// waitService waits until cond holds on the service's file.
func waitService(t *testing.T, dir string, timeout time.Duration, what string, cond func(f jobfiles.ServiceFile) bool) jobfiles.ServiceFile {
	t.Helper()
	var last jobfiles.ServiceFile
	ok := assertEventually(timeout, func() bool {
		f, ok := readService(dir)
		if ok {
			last = f
		}
		return ok && cond(f)
	})
	b, _ := json.MarshalIndent(last.Service, "", "  ")
	require.True(t, ok, "the service never showed %s within %s; last:\n%s", what, timeout, b)
	return last
}

// result is one request of a steady client.
type result struct {
	T       float64 `json:"t"`
	OK      bool    `json:"ok"`
	Stream  bool    `json:"stream"`
	Latency float64 `json:"latency"`
	Error   string  `json:"error"`
}

func readResults(t *testing.T, path string) []result {
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	var rs []result
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r result
		require.NoError(t, json.Unmarshal(sc.Bytes(), &r))
		rs = append(rs, r)
	}
	return rs
}

// recordedFor is the time between a steady client's first and last request.
func recordedFor(path string) time.Duration {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var first, last result
	if json.Unmarshal([]byte(lines[0]), &first) != nil || json.Unmarshal([]byte(lines[len(lines)-1]), &last) != nil {
		return 0
	}
	return time.Duration((last.T - first.T) * float64(time.Second))
}

// directResult is one request of the client that calls the first job's own URL, not following.
type directResult struct {
	at         time.Time
	status     int
	retryAfter string
	successor  string
	err        string
}

// TestServiceHandover keeps a service of 2-minute jobs up for over 6 minutes, across at least
// two handovers. Two steady clients, one through llm-agent tunnel --service from the laptop and
// one with the Python client's connect(service=...) on the login side, see no failed request;
// a third calls the first job's own URL and sees only answers or 503 with Retry-After, never a
// refused connection or a cut stream, until that job stops. llm-agent stop --service ends the
// chain with nothing left in the queue.
func TestServiceHandover(t *testing.T) {
	login := startLoginHost(t)
	name, dir := newServiceName(t)
	first := serviceJob(t, name, "--for", "15m")
	c1 := first.waitState(jobfiles.StateReady, readyTimeout)
	waitService(t, dir, 30*time.Second, "serving", func(f jobfiles.ServiceFile) bool {
		return f.Service.State == jobfiles.ServiceServing && f.JobID == first.id
	})
	key := first.apiKey(c1)
	serviceKey, err := os.ReadFile(filepath.Join(dir, jobfiles.APIKeyFile))
	require.NoError(t, err)
	require.Equal(t, strings.TrimSpace(string(serviceKey)), key, "the job serves with the service's key")

	work := filepath.Join(login.dir, "service")
	require.NoError(t, os.Mkdir(work, 0o700))
	keyFile := filepath.Join(work, "key")
	stop := filepath.Join(work, "stop")
	localPort := 18081
	tunOut := serviceTunnel(t, login, name, localPort, keyFile)
	tunOut.waitFor(t, 0, "ready", 30*time.Second)

	venv := os.Getenv("LLM_AGENT_CLIENT_VENV")
	if venv == "" {
		venv = filepath.Join(suite.root, ".venv-client")
	}
	python := filepath.Join(venv, "bin", "python")
	script := filepath.Join(suite.root, "e2e", "steady-client.py")
	clientEnv := append(os.Environ(), "HOME="+serviceHome, "MODEL="+c1.ServedModelName, "SERVICE="+name,
		"KEY_FILE="+keyFile, fmt.Sprintf("OPENAI_BASE_URL=http://127.0.0.1:%d/v1", localPort))
	viaTunnel, viaClient := filepath.Join(work, "tunnel.jsonl"), filepath.Join(work, "client.jsonl")
	clients := []*exec.Cmd{inLaptop(python, script, "tunnel", viaTunnel, stop), exec.Command(python, script, "service", viaClient, stop)}
	for _, cl := range clients {
		cl.Env = clientEnv
		out, err := os.Create(filepath.Join(work, filepath.Base(cl.Args[len(cl.Args)-2])+".log"))
		require.NoError(t, err)
		cl.Stdout, cl.Stderr = out, out
		require.NoError(t, cl.Start())
	}
	t.Cleanup(func() {
		os.WriteFile(stop, nil, 0o600)
		for _, cl := range clients {
			cl.Process.Kill()
			cl.Wait()
		}
	})

	// The direct client: the first job's own URL, as a client that does not follow calls it.
	direct := directClient(t, c1, key)

	// At least two handovers, and 6 minutes of requests recorded.
	f := waitService(t, dir, 10*time.Minute, "two handovers and 6 minutes of requests", func(f jobfiles.ServiceFile) bool {
		handed := 0
		for _, j := range f.Service.Jobs {
			if strings.HasPrefix(j.Why, "handed over to job") {
				handed++
			}
		}
		return handed >= 2 && recordedFor(viaTunnel) >= 6*time.Minute && recordedFor(viaClient) >= 6*time.Minute
	})
	require.NotEqual(t, first.id, f.JobID, "a successor serves now")
	require.Equal(t, jobfiles.StateReady, f.State)

	out, err := exec.Command(suite.agentBin, "status", "--service", name).CombinedOutput()
	require.NoError(t, err, "status --service: %s", out)
	assert.Contains(t, string(out), "service "+name)
	assert.Contains(t, string(out), "handed over to job")

	// End the clients, then the chain.
	require.NoError(t, os.WriteFile(stop, nil, 0o600))
	for _, cl := range clients {
		require.NoError(t, cl.Wait())
	}
	stopOut, err := exec.Command(suite.agentBin, "stop", "--service", name, "--wait", "90s").CombinedOutput()
	require.NoError(t, err, "stop --service: %s", stopOut)
	f, _ = readService(dir)
	assert.Equal(t, jobfiles.ServiceStopped, f.Service.State)
	assert.True(t, f.Service.Ended)
	var ids []string
	for _, j := range f.Service.Jobs {
		ids = append(ids, j.JobID)
	}
	if n := f.Service.Successor; n != nil && n.JobID != "" {
		ids = append(ids, n.JobID)
	}
	q, err := exec.Command("squeue", "-h", "-t", "PENDING,RUNNING,CONFIGURING,COMPLETING", "-j", strings.Join(ids, ","), "-o", "%i %T").CombinedOutput()
	require.NoError(t, err, "%s", q)
	assert.Empty(t, strings.TrimSpace(string(q)), "nothing of the service is left in the queue")

	usage, err := exec.Command(suite.agentBin, "usage", "--service", name).CombinedOutput()
	require.NoError(t, err, "usage --service: %s", usage)
	assert.Contains(t, string(usage), fmt.Sprintf("service, %d jobs", len(f.Service.Jobs)))

	// Every request of the following clients succeeded.
	handovers := handoverTimes(f)
	require.GreaterOrEqual(t, len(handovers), 2)
	for _, path := range []string{viaTunnel, viaClient} {
		rs := readResults(t, path)
		require.NotEmpty(t, rs)
		var failed []result
		for _, r := range rs {
			if !r.OK {
				failed = append(failed, r)
			}
		}
		assert.Empty(t, failed, "%s: requests failed", filepath.Base(path))
		near, away := handoverLatency(rs, handovers)
		t.Logf("HANDOVER %s: %d requests over %s, %d failed, %d handovers; during the handovers: %d requests, p50 %.1f ms, max %.1f ms; the rest: %d requests, p50 %.1f ms, max %.1f ms",
			strings.TrimSuffix(filepath.Base(path), ".jsonl"), len(rs), time.Duration((rs[len(rs)-1].T-rs[0].T)*float64(time.Second)).Round(time.Second),
			len(failed), len(handovers), len(near), pct(near, 50)*1000, pct(near, 100)*1000, len(away), pct(away, 50)*1000, pct(away, 100)*1000)
		if d := os.Getenv("LLM_AGENT_HANDOVER_DATA"); d != "" {
			b, _ := os.ReadFile(path)
			os.WriteFile(filepath.Join(d, "handover-"+filepath.Base(path)), b, 0o644)
		}
	}
	if d := os.Getenv("LLM_AGENT_HANDOVER_DATA"); d != "" {
		b, _ := json.MarshalIndent(f, "", "  ")
		os.WriteFile(filepath.Join(d, "handover-service.json"), b, 0o644)
	}

	// The client that did not follow saw answers, then 503s with Retry-After, and nothing else.
	rs := direct()
	var unavailable int
	for _, r := range rs {
		switch {
		case r.err != "":
			t.Errorf("the first job's own URL: %s at %s", r.err, r.at.Format(time.TimeOnly))
		case r.status == http.StatusServiceUnavailable:
			unavailable++
			assert.Equal(t, "1", r.retryAfter)
		case r.status != http.StatusOK:
			t.Errorf("the first job's own URL answered %d at %s", r.status, r.at.Format(time.TimeOnly))
		}
	}
	assert.Positive(t, unavailable, "the first job answered 503 during its handover")
	t.Logf("HANDOVER direct: %d requests to the first job's own URL, %d answered 503 with Retry-After: 1, 0 refused or cut", len(rs), unavailable)
}

// directClient calls the job's own URL every 100 ms, streaming every other time, until the
// job's connection file leaves the ready state and the handover's window (its 503s) is over:
// then the job drains and closes its port. It returns the results.
func directClient(t *testing.T, c jobfiles.Connection, key string) func() []directResult {
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var rs []directResult
	done := make(chan struct{})
	connFile := filepath.Join(filepath.Dir(c.EnvFile), jobfiles.ConnectionFile)
	go func() {
		defer close(done)
		client := &http.Client{Timeout: 30 * time.Second}
		for i := 0; ctx.Err() == nil; i++ {
			if cur, err := jobfiles.ReadConnection(connFile); err == nil && cur.State != jobfiles.StateReady {
				return // the handover's window is over: the job drains
			}
			stream := i%2 == 1
			body := fmt.Sprintf(`{"model":%q,"max_tokens":4,"stream":%v,"messages":[{"role":"user","content":"hi"}]}`, c.ServedModelName, stream)
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.BaseURL+"/chat/completions", strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+key)
			req.Header.Set("Content-Type", "application/json")
			r := directResult{at: time.Now()}
			resp, err := client.Do(req)
			if err == nil {
				b, rerr := io.ReadAll(resp.Body)
				resp.Body.Close()
				r.status, r.retryAfter, r.successor = resp.StatusCode, resp.Header.Get("Retry-After"), resp.Header.Get("X-Llm-Agent-Successor")
				switch {
				case rerr != nil:
					r.err = "cut: " + rerr.Error()
				case stream && resp.StatusCode == http.StatusOK && !strings.Contains(string(b), "data: [DONE]"):
					r.err = "a stream ended without [DONE]"
				}
			} else if ctx.Err() == nil {
				r.err = err.Error()
			}
			mu.Lock()
			rs = append(rs, r)
			mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(cancel)
	return func() []directResult {
		select {
		case <-done:
		case <-time.After(5 * time.Minute):
			t.Errorf("the first job never left the ready state")
			cancel()
			<-done
		}
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(rs)
	}
}

// window is a handover: from the successor's ready to the predecessor's end.
type window struct{ from, to time.Time }

// handoverTimes are the service's handovers, each until 5 s after the predecessor ended.
func handoverTimes(f jobfiles.ServiceFile) []window {
	var ws []window
	for _, j := range f.Service.Jobs {
		if p := f.Service.Job(j.Of); p != nil && j.Ready != nil && p.Ended != nil {
			ws = append(ws, window{*j.Ready, p.Ended.Add(5 * time.Second)})
		}
	}
	return ws
}

// handoverLatency splits the requests' latencies: those that began during a handover, and the
// rest, each sorted.
func handoverLatency(rs []result, handovers []window) (near, away []float64) {
	for _, r := range rs {
		at := time.Unix(0, int64(r.T*1e9))
		close := false
		for _, h := range handovers {
			if !at.Before(h.from) && at.Before(h.to) {
				close = true
			}
		}
		if close {
			near = append(near, r.Latency)
		} else {
			away = append(away, r.Latency)
		}
	}
	slices.Sort(near)
	slices.Sort(away)
	return near, away
}

// pct is the p-th percentile of sorted values (100: the max).
func pct(sorted []float64, p int) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, len(sorted)*p/100)]
}

// TestServiceSuccessorCannotStart: a successor that Slurm refuses (a constraint no node has) is
// queued again up to the retries, and the service's file says why in Slurm's words; stop
// --service then ends the chain with nothing left.
func TestServiceSuccessorCannotStart(t *testing.T) {
	name, dir := newServiceName(t)
	j := serviceJob(t, name, "--for", "10m", "--successor-retries", "1", "--successor-sbatch-arg=--constraint=nosuchfeature")
	j.waitState(jobfiles.StateReady, readyTimeout)
	f := waitService(t, dir, time.Minute, "the successor's failure", func(f jobfiles.ServiceFile) bool {
		n := f.Service.Successor
		return n != nil && n.State == "failed" && n.Attempts == 2
	})
	assert.Contains(t, f.Service.Successor.Reason, "Invalid feature specification", "Slurm's reason")
	out, err := exec.Command(suite.agentBin, "status", "--service", name).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "Invalid feature specification")

	stopOut, err := exec.Command(suite.agentBin, "stop", "--service", name, "--wait", "90s").CombinedOutput()
	require.NoError(t, err, "stop --service: %s", stopOut)
	assert.Contains(t, j.waitEnded(time.Minute), "CANCELLED")
	f, _ = readService(dir)
	assert.Equal(t, jobfiles.ServiceStopped, f.Service.State)
	assert.Equal(t, jobfiles.StateStopped, f.State)
}

// serviceTunnel starts llm-agent tunnel on the laptop for the service name, with extra options,
// and returns its output, watched; the test's cleanup kills it.
func serviceTunnel(t *testing.T, login *loginHost, name string, localPort int, keyFile string, extra ...string) *lines {
	t.Helper()
	args := append([]string{"tunnel", "--login", "root@" + loginOutside, "--service", name, "--local-port", strconv.Itoa(localPort),
		"--interval", "1s", "--fetch-key", "--key-file", keyFile}, extra...)
	for _, o := range login.sshOs {
		args = append(args, "--ssh-option", o)
	}
	tun := inLaptop(suite.agentBin, args...)
	pr, pw := io.Pipe()
	tun.Stdout, tun.Stderr = pw, pw
	tunOut := watchLines(pr)
	require.NoError(t, tun.Start())
	tunDone := make(chan struct{})
	go func() { tun.Wait(); pw.Close(); close(tunDone) }()
	t.Cleanup(func() {
		tun.Process.Kill()
		<-tunDone
		if t.Failed() {
			t.Logf("tunnel output:\n%s", tunOut.text())
		}
	})
	return tunOut
}
