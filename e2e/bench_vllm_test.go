//go:build e2evllm

package e2e

import (
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// benchRun is what both benchmarks report of one run.
type benchRun struct {
	tool       string
	throughput float64 // requests per second
	medianTTFT float64 // ms
}

// TestBenchAgreesWithVLLMBench runs llm-agent bench and vllm bench serve (from the same vLLM
// install) on the same endpoint and workload, alternating, three times each: request
// throughput and median TTFT must agree within 10%. Raw output goes to $LLM_AGENT_BENCH_OUT
// when set (docs/data keeps a copy).
func TestBenchAgreesWithVLLMBench(t *testing.T) {
	// Without Ray: its daemons would share the engine's core and add their noise.
	// The engine's OpenMP threads: one, bound to core 0. By default vLLM's CPU build starts one
	// per core of its mask; pinned onto one core afterwards, two of them fight over it and a
	// run's throughput swings by a third.
	spec := vllmJob(t, "singlenode.sbatch", []string{"--gpus-per-node=2", "--cpus-per-task=1"}, 1, 1, "--launcher", "mp")
	spec.env = append(spec.env, "VLLM_CPU_OMP_THREADS_BIND=0")
	j := submit(t, spec)
	c := j.waitState(jobfiles.StateReady, vllmReadyTimeout)
	// This machine may have two cores: the engine and its gateway get one, each benchmark the
	// other, so that neither client's own work slows the engine it measures.
	cpus := runtime.NumCPU()
	require.GreaterOrEqual(t, cpus, 2, "the comparison needs a core for the engine and one for the client")
	pids, err := exec.Command("ip", "netns", "pids", "llmnode1").Output()
	require.NoError(t, err)
	for _, pid := range strings.Fields(string(pids)) {
		exec.Command("taskset", "-a", "-p", "-c", "0", pid).Run() // a process may have ended meanwhile
	}
	client := strconv.Itoa(cpus - 1)
	outDir := os.Getenv("LLM_AGENT_BENCH_OUT")
	if outDir == "" {
		outDir = t.TempDir()
	}
	require.NoError(t, os.MkdirAll(outDir, 0o755))
	keyFile := filepath.Join(t.TempDir(), "key")
	require.NoError(t, os.WriteFile(keyFile, []byte(j.apiKey(c)+"\n"), 0o600))
	const (
		prompts     = "256"
		n           = 256
		concurrency = "4"
		inputLen    = "64"
		outputLen   = "32"
	)
	// The same kind of text prompts as vllm bench serve's random dataset, made its way with the
	// model's tokenizer: random ids, decoded, re-encoded and cut to the length, decoded again.
	// (llm-agent bench's own random prompts are token ids, which the server does not tokenize;
	// they are run too, for the exact input length.)
	texts := filepath.Join(outDir, "random-text-prompts.jsonl")
	gen := exec.Command(filepath.Join(suite.venv, "bin", "python"), "-c", `
import json, random, sys
from transformers import AutoTokenizer
t = AutoTokenizer.from_pretrained(sys.argv[1])
r = random.Random(0)
with open(sys.argv[2], "w") as f:
    for _ in range(int(sys.argv[3])):
        ids = t.encode(t.decode([r.randrange(t.vocab_size) for _ in range(int(sys.argv[4]))]), add_special_tokens=False)
        f.write(json.dumps({"prompt": t.decode(ids[:int(sys.argv[4])])}) + "\n")
`, tiny(t), texts, prompts, inputLen)
	if out, err := gen.CombinedOutput(); err != nil {
		t.Fatalf("text prompts: %v\n%s", err, out)
	}
	ours := func(name string, i int, workload ...string) benchRun {
		base := filepath.Join(outDir, "llm-agent-bench-"+name+"-"+strconv.Itoa(i))
		args := append([]string{"-c", client, suite.agentBin, "bench", "--url", c.BaseURL, "--api-key-file", keyFile, "--model", c.ServedModelName,
			"--output-len", outputLen, "--ignore-eos", "--num-prompts", prompts, "--max-concurrency", concurrency,
			"--seed", strconv.Itoa(i), "--json", base + ".json"}, workload...)
		out, err := exec.Command("taskset", args...).CombinedOutput()
		require.NoError(t, err, "llm-agent bench: %s", out)
		require.NoError(t, os.WriteFile(base+".txt", out, 0o644))
		var doc struct {
			Runs []struct {
				Completed, Failed int
				RequestThroughput float64 `json:"request_throughput"`
				TTFT              struct {
					Median float64 `json:"median"`
				} `json:"ttft_ms"`
				InputChecked    int `json:"input_len_checked"`
				InputMismatched int `json:"input_len_mismatched"`
			} `json:"runs"`
		}
		b, err := os.ReadFile(base + ".json")
		require.NoError(t, err)
		require.NoError(t, json.Unmarshal(b, &doc))
		require.Len(t, doc.Runs, 1)
		r := doc.Runs[0]
		require.Equal(t, n, r.Completed, "%s", out)
		if name == "ids" {
			assert.Equal(t, n, r.InputChecked, "every request's prompt_tokens is checked")
			assert.Zero(t, r.InputMismatched, "the input length is exact")
		}
		return benchRun{"llm-agent bench (" + name + ")", r.RequestThroughput, r.TTFT.Median}
	}
	theirs := func(i int) benchRun {
		name := "vllm-bench-serve-" + strconv.Itoa(i) + ".json"
		cmd := exec.Command("taskset", "-c", client, vllmBin(t), "bench", "serve", "--backend", "vllm", "--base-url", strings.TrimSuffix(c.BaseURL, "/v1"),
			"--endpoint", "/v1/completions", "--model", tiny(t), "--served-model-name", c.ServedModelName, "--tokenizer", tiny(t),
			"--dataset-name", "random", "--random-input-len", inputLen, "--random-output-len", outputLen, "--ignore-eos",
			"--num-prompts", prompts, "--max-concurrency", concurrency, "--seed", strconv.Itoa(i),
			"--save-result", "--result-dir", outDir, "--result-filename", name, "--disable-tqdm")
		cmd.Env = append(os.Environ(), "OPENAI_API_KEY="+j.apiKey(c))
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "vllm bench serve: %s", tail(string(out), 30))
		require.NoError(t, os.WriteFile(filepath.Join(outDir, "vllm-bench-serve-"+strconv.Itoa(i)+".txt"), out, 0o644))
		var doc struct {
			Completed         int     `json:"completed"`
			RequestThroughput float64 `json:"request_throughput"`
			MedianTTFT        float64 `json:"median_ttft_ms"`
		}
		b, err := os.ReadFile(filepath.Join(outDir, name))
		require.NoError(t, err)
		require.NoError(t, json.Unmarshal(b, &doc))
		require.Equal(t, n, doc.Completed)
		return benchRun{"vllm bench serve", doc.RequestThroughput, doc.MedianTTFT}
	}
	// A first run of each, not counted, warms the engine (and the page cache of vLLM's client).
	ours("ids", 9, "--input-len", inputLen)
	theirs(9)
	var ids, a, b []benchRun
	start := time.Now()
	for i := 0; i < 3; i++ {
		ids = append(ids, ours("ids", i, "--input-len", inputLen))
		a = append(a, ours("text", i, "--dataset", "jsonl", "--dataset-path", texts))
		b = append(b, theirs(i))
	}
	// The median of the three runs: one run that the machine slowed (a run's TTFT has doubled
	// now and then on this 2-core machine) does not decide the comparison.
	mean := func(rs []benchRun, f func(benchRun) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		sort.Float64s(v)
		return v[len(v)/2]
	}
	for i := range a {
		t.Logf("BENCH bench-vs-vllm run %d: llm-agent bench text prompts %.3f req/s, median TTFT %.2f ms; vllm bench serve %.3f req/s, median TTFT %.2f ms; llm-agent bench token-id prompts %.3f req/s, median TTFT %.2f ms",
			i, a[i].throughput, a[i].medianTTFT, b[i].throughput, b[i].medianTTFT, ids[i].throughput, ids[i].medianTTFT)
	}
	tput := func(r benchRun) float64 { return r.throughput }
	ttft := func(r benchRun) float64 { return r.medianTTFT }
	ta, tb := mean(a, tput), mean(b, tput)
	fa, fb := mean(a, ttft), mean(b, ttft)
	t.Logf("BENCH bench-vs-vllm median of 3 (%.0f s): request throughput %.3f vs %.3f req/s (ratio %.3f); median TTFT %.2f vs %.2f ms (ratio %.3f)",
		time.Since(start).Seconds(), ta, tb, ta/tb, fa, fb, fa/fb)
	t.Logf("BENCH bench-vs-vllm token-id prompts, median of 3: %.3f req/s, median TTFT %.2f ms (the server tokenizes no text)", mean(ids, tput), mean(ids, ttft))
	// The job ends before the next test: a job still ending holds node 1, and the next
	// single-node job would land elsewhere.
	require.NoError(t, exec.Command("scancel", j.id).Run())
	j.waitState(jobfiles.StateStopped, drainBound)
	requireNoProcesses(t, drainBound)
	j.waitEnded(drainBound) // Slurm has let go of node 1, not only its processes
	// On this 2-core machine one tool's own runs can differ by a third (vllm bench serve's ran
	// at 16.7 to 22.3 req/s within one test in CI). The tools must agree within 10%, or, where
	// the machine's noise is larger, within the spread of either tool's own runs (the machine's
	// noise as this test saw it),
	// and never by more than 25%: a wrong definition (TTFT from the request's end, say) shows
	// as a difference far beyond both.
	spread := func(rs []benchRun, f func(benchRun) float64) float64 {
		lo, hi := math.Inf(1), math.Inf(-1)
		for _, r := range rs {
			lo, hi = math.Min(lo, f(r)), math.Max(hi, f(r))
		}
		return hi/lo - 1
	}
	for _, m := range []struct {
		name   string
		f      func(benchRun) float64
		ours   float64
		theirs float64
	}{{"request throughput", tput, ta, tb}, {"median TTFT", ttft, fa, fb}} {
		diff := math.Abs(m.ours/m.theirs - 1)
		noise := math.Max(spread(a, m.f), spread(b, m.f))
		t.Logf("BENCH bench-vs-vllm %s: differ by %.1f%%; the runs of each spread %.1f%% (llm-agent bench) and %.1f%% (vllm bench serve)",
			m.name, 100*diff, 100*spread(a, m.f), 100*spread(b, m.f))
		assert.True(t, diff < 0.10 || (diff <= noise && diff < 0.25),
			"%s: llm-agent bench and vllm bench serve differ by %.1f%%, more than 10%% and more than the noise of their own runs (%.1f%%)", m.name, 100*diff, 100*noise)
	}

}
