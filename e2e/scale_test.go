//go:build e2e

package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// benchRun runs llm-agent bench against the service's current job and returns its request
// throughput and failed requests.
func benchRun(t *testing.T, c jobfiles.Connection, prompts, concurrency int, out string) (float64, int) {
	t.Helper()
	args := []string{"bench", "--url", c.BaseURL, "--api-key-file", c.APIKeyFile, "--model", c.ServedModelName, "--input-len", "16",
		"--output-len", "16", "--ignore-eos", "--num-prompts", strconv.Itoa(prompts), "--max-concurrency", strconv.Itoa(concurrency), "--no-progress"}
	b, err := exec.Command(suite.agentBin, args...).CombinedOutput()
	require.NoError(t, err, "llm-agent bench: %s", b)
	if out != "" {
		require.NoError(t, os.WriteFile(out, b, 0o644))
	}
	m := regexp.MustCompile(`Request throughput \(req/s\):\s+([0-9.]+)`).FindSubmatch(b)
	f := regexp.MustCompile(`Failed requests:\s+([0-9]+)`).FindSubmatch(b)
	require.True(t, m != nil && f != nil, "%s", b)
	rate, _ := strconv.ParseFloat(string(m[1]), 64)
	failed, _ := strconv.Atoi(string(f[1]))
	return rate, failed
}

// TestServiceScalesOut: a service with --max-jobs 2 serves a short burst with its one job; under
// a load that stays above the target it adds a job, which joins the rotation, and the
// throughput rises to at least 1.8x one job's; when the load falls, the added job is drained
// and cancelled while requests keep coming, none of them failing.
func TestServiceScalesOut(t *testing.T) {
	name, dir := newServiceName(t)
	j := submit(t, jobSpec{script: "service.sbatch", home: serviceHome, env: []string{"FAKEVLLM_TOKEN_DELAY=10ms"},
		sbatch: []string{"-N", "1", "--gpus-per-node=1", "--cpus-per-task=1", "--time=10"},
		agent: []string{"--service", name, "--max-jobs", "2", "--scale-target", "1", "--scale-interval", "1s", "--scale-window", "5s",
			"--scale-up-delay", "5s", "--scale-down-delay", "15s", "--vllm-arg=--max-num-seqs", "--vllm-arg=4"}})
	c := j.waitState(jobfiles.StateReady, readyTimeout)
	outDir := os.Getenv("LLM_AGENT_BENCH_OUT")
	out := func(n string) string {
		if outDir == "" {
			return ""
		}
		return filepath.Join(outDir, n)
	}

	// One job: a burst shorter than the up delay adds nothing.
	one, failed := benchRun(t, c, 60, 12, out("scale-1job.txt"))
	require.Zero(t, failed)
	f, _ := readService(dir)
	require.Empty(t, f.Service.Extras, "a burst shorter than --scale-up-delay adds no job")

	// A load that stays: the service adds a job, and it joins the rotation.
	added := time.Now()
	load := exec.Command(suite.agentBin, "bench", "--url", c.BaseURL, "--api-key-file", c.APIKeyFile, "--model", c.ServedModelName,
		"--input-len", "16", "--output-len", "16", "--ignore-eos", "--num-prompts", "100000", "--max-concurrency", "12", "--no-progress", "--duration", "3m")
	require.NoError(t, load.Start())
	t.Cleanup(func() { load.Process.Kill(); load.Wait() })
	f = waitService(t, dir, 3*time.Minute, "an added job ready", func(f jobfiles.ServiceFile) bool {
		return len(f.Service.Extras) == 1 && f.Service.Extras[0].State == jobfiles.ExtraReady
	})
	extra := f.Service.Extras[0]
	readyAfter := extra.Ready.Sub(added)
	inRotation := `replica="job ` + extra.JobID + `"} 1`
	require.True(t, assertEventually(30*time.Second, func() bool {
		for _, line := range strings.Split(metricsText(t, c.Metrics[0].MetricsURL), "\n") {
			if strings.HasPrefix(line, "llm_agent_gateway_replica_up{") && strings.HasSuffix(line, inRotation) {
				return true
			}
		}
		return false
	}), "the added job's engine joins the head's rotation")
	load.Process.Kill()
	load.Wait()

	// Two jobs: the same load's throughput.
	two, failed := benchRun(t, c, 300, 12, out("scale-2jobs.txt"))
	require.Zero(t, failed)
	t.Logf("SCALE: one job %.2f req/s, two jobs %.2f req/s (%.2fx); the added job (%s) was ready %s after the load began (%s)",
		one, two, two/one, extra.JobID, readyAfter.Round(time.Second), extra.Reason)
	assert.GreaterOrEqual(t, two, 1.8*one, "two jobs serve at least 1.8x what one does")

	// The load falls to what one engine runs without a queue: the added job is drained and
	// cancelled while a light client keeps sending, and none of its requests fails.
	light := make(chan [2]float64, 1)
	go func() {
		rate, failed := benchRun(t, c, 400, 2, out("scale-drain.txt"))
		light <- [2]float64{rate, float64(failed)}
	}()
	waitService(t, dir, 2*time.Minute, "the added job drained", func(f jobfiles.ServiceFile) bool { return len(f.Service.Extras) == 0 })
	r := <-light
	assert.Zero(t, r[1], "no request failed while the added job was drained")
	q, _ := exec.Command("squeue", "-h", "-j", extra.JobID, "-o", "%T").CombinedOutput()
	t.Logf("SCALE: drained while %d requests at concurrency 2 went on (%.2f req/s, %v failed); squeue now says %q", 400, r[0], r[1], string(q))
	m := metricsText(t, c.Metrics[0].MetricsURL)
	for _, want := range []string{`llm_agent_service_scale_decisions_total{action="up"`, `llm_agent_service_scale_decisions_total{action="down"`} {
		v, ok := metricValue(m, want)
		assert.True(t, ok && v == "1", "%s is %s", want, v)
	}
}
