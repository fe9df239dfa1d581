//go:build e2e

package e2e

import (
	"bufio"
	"fmt"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// stream is one streamed answer in flight when the node was lost, as its client saw it.
type stream struct {
	status int
	whole  bool // [DONE] came
	err    error
	took   time.Duration
}

// streamAnswer asks for a long streamed answer and reads it to its end; started hears of its
// first event.
func streamAnswer(c jobfiles.Connection, key string, started chan<- struct{}) stream {
	start := time.Now()
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"go on"}],"max_tokens":200,"stream":true}`, c.ServedModelName)
	req, _ := http.NewRequest(http.MethodPost, c.BaseURL+"/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 3 * time.Minute}).Do(req)
	if err != nil {
		return stream{err: err, took: time.Since(start)}
	}
	defer resp.Body.Close()
	s := stream{status: resp.StatusCode}
	sc := bufio.NewScanner(resp.Body)
	first := true
	for sc.Scan() {
		if first && strings.HasPrefix(sc.Text(), "data: ") {
			started <- struct{}{}
			first = false
		}
		if sc.Text() == "data: [DONE]" {
			s.whole = true
		}
	}
	s.err, s.took = sc.Err(), time.Since(start)
	return s
}

// loseNode kills every process of a node (its slurmd, the job's agent, Ray, all) and takes its
// link down: the node is gone as if it had lost power. The test's cleanup brings it back.
func loseNode(t *testing.T, host string) {
	t.Helper()
	ns := "llm" + host
	t.Cleanup(func() { restoreNode(t, host) })
	out, err := exec.Command("ip", "netns", "pids", ns).Output()
	require.NoError(t, err)
	for _, pid := range strings.Fields(string(out)) {
		if p, err := strconv.Atoi(pid); err == nil {
			syscall.Kill(p, syscall.SIGKILL)
		}
	}
	setLink(t, host, "down")
}

// TestLostNode loses a worker whole while answers stream (issue 31, item 4): the job fails
// with the true reason within Ray's notice and --node-lost-timeout, every answer in flight
// ends (none hangs), Slurm ends the job once its SlurmdTimeout declares the node down, and
// nothing of the job is left on the nodes that remain.
func TestLostNode(t *testing.T) {
	const lostTimeout = 20 * time.Second
	// --no-requeue: Slurm would otherwise start the job over on the nodes left (JobRequeue=1).
	j := submit(t, jobSpec{script: "multinode.sbatch", sbatch: []string{"-N", "2", "--gpus-per-node=1", "--cpus-per-task=1", "--no-requeue"},
		agent: []string{"--node-lost-timeout", lostTimeout.String()}, env: []string{"FAKEVLLM_TOKEN_DELAY=200ms"}})
	c := j.waitState(jobfiles.StateReady, readyTimeout)
	worker := jobHosts(t, j.id)[1]
	key := j.apiKey(c)

	var wg sync.WaitGroup
	streams := make([]stream, 4)
	started := make(chan struct{}, len(streams))
	for i := range streams {
		wg.Go(func() { streams[i] = streamAnswer(c, key, started) })
	}
	for range streams {
		select {
		case <-started:
		case <-time.After(30 * time.Second):
			t.Fatal("the answers never started")
		}
	}
	loseNode(t, worker)
	lost := time.Now()

	end := j.waitState(jobfiles.StateFailed, lostTimeout+90*time.Second)
	detect := time.Since(lost)
	assert.Contains(t, end.Reason, worker+" unreachable")
	t.Logf("lost node: failed %.1f s after the loss (--node-lost-timeout %s): %s", detect.Seconds(), lostTimeout, end.Reason)

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("answers in flight still hang 2 min after the loss")
	}
	for _, s := range streams {
		assert.True(t, s.err != nil || s.status != 0, "each answer ended")
		t.Logf("in flight: status %d, whole %v, error %v, after %.1f s", s.status, s.whole, s.err, s.took.Seconds())
	}

	state := j.waitEnded(3 * time.Minute)
	t.Logf("slurm: job %s %s %.1f s after the loss; %s", j.id, state, time.Since(lost).Seconds(), nodeState(worker))
	requireNoProcesses(t, time.Minute)
	out, err := exec.Command(suite.agentBin, "status", j.stateDir).CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	}
	assert.Equal(t, 1, code, "llm-agent status of a failed job")
	assert.Contains(t, string(out), worker+" unreachable")
	t.Logf("llm-agent status (exit %d):\n%s", code, out)
}

// restoreNode brings a node back for the tests that follow: its link up, its slurmd started
// again if it was killed, and the node back in service (e2e/cluster/up.sh waits for it).
func restoreNode(t *testing.T, host string) {
	exec.Command("ip", "-n", "llm"+host, "link", "set", "eth0", "up").Run()
	if out, err := exec.Command(suite.root + "/e2e/cluster/up.sh").CombinedOutput(); err != nil {
		t.Errorf("bring %s back: %v: %s", host, err, out)
	}
}

func nodeState(host string) string {
	out, _ := exec.Command("sinfo", "-h", "-n", host, "-o", "%N %T %E").Output()
	return strings.TrimSpace(string(out))
}
