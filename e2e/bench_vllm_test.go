//go:build e2evllm

package e2e

import (
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
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
	throughput float64 // requests per second
	medianTTFT float64 // ms
	medianTPOT float64 // ms
}

// benchTools runs llm-agent bench and vllm bench serve, pinned to one core, with one workload
// against one endpoint, and keeps every run's output in dir.
type benchTools struct {
	t                  *testing.T
	dir, core, keyFile string
	url, model         string // the endpoint's /v1 URL and served model name
	texts              string // the text prompts (jsonl) that match vllm bench serve's random ones
}

const (
	benchInputLen    = "64"
	benchOutputLen   = "32"
	benchConcurrency = 4
)

func (b benchTools) ours(name string, prompts, seed int, workload ...string) benchRun {
	t := b.t
	base := filepath.Join(b.dir, fmt.Sprintf("llm-agent-bench-%s-%d", name, seed))
	args := append([]string{"-c", b.core, suite.agentBin, "bench", "--url", b.url, "--api-key-file", b.keyFile, "--model", b.model,
		"--output-len", benchOutputLen, "--ignore-eos", "--num-prompts", strconv.Itoa(prompts), "--max-concurrency", strconv.Itoa(benchConcurrency),
		"--seed", strconv.Itoa(seed), "--no-progress", "--json", base + ".json"}, workload...)
	out, err := exec.Command("taskset", args...).CombinedOutput()
	require.NoError(t, err, "llm-agent bench: %s", out)
	require.NoError(t, os.WriteFile(base+".txt", out, 0o644))
	var doc struct {
		Runs []struct {
			Completed         int
			RequestThroughput float64 `json:"request_throughput"`
			TTFT              struct {
				Median float64 `json:"median"`
			} `json:"ttft_ms"`
			TPOT struct {
				Median float64 `json:"median"`
			} `json:"tpot_ms"`
			InputChecked    int `json:"input_len_checked"`
			InputMismatched int `json:"input_len_mismatched"`
		} `json:"runs"`
	}
	raw, err := os.ReadFile(base + ".json")
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(raw, &doc))
	require.Len(t, doc.Runs, 1)
	r := doc.Runs[0]
	require.Equal(t, prompts, r.Completed, "%s", out)
	if strings.Contains(strings.Join(workload, " "), "--input-len") {
		assert.Equal(t, prompts, r.InputChecked, "every request's prompt_tokens is checked")
		assert.Zero(t, r.InputMismatched, "the input length is exact")
	}
	return benchRun{r.RequestThroughput, r.TTFT.Median, r.TPOT.Median}
}

func (b benchTools) text(prompts, seed int) benchRun {
	return b.ours("text", prompts, seed, "--dataset", "jsonl", "--dataset-path", b.texts)
}

func (b benchTools) theirs(prompts, seed int) benchRun {
	t := b.t
	name := fmt.Sprintf("vllm-bench-serve-%d", seed)
	cmd := exec.Command("taskset", "-c", b.core, vllmBin(t), "bench", "serve", "--backend", "vllm", "--base-url", strings.TrimSuffix(b.url, "/v1"),
		"--endpoint", "/v1/completions", "--model", tiny(t), "--served-model-name", b.model, "--tokenizer", tiny(t),
		"--dataset-name", "random", "--random-input-len", benchInputLen, "--random-output-len", benchOutputLen, "--ignore-eos",
		"--num-prompts", strconv.Itoa(prompts), "--max-concurrency", strconv.Itoa(benchConcurrency), "--seed", strconv.Itoa(seed),
		"--save-result", "--result-dir", b.dir, "--result-filename", name+".json", "--disable-tqdm")
	key, err := os.ReadFile(b.keyFile)
	require.NoError(t, err)
	cmd.Env = append(os.Environ(), "OPENAI_API_KEY="+strings.TrimSpace(string(key)))
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "vllm bench serve: %s", tail(string(out), 30))
	require.NoError(t, os.WriteFile(filepath.Join(b.dir, name+".txt"), out, 0o644))
	var doc struct {
		Completed         int     `json:"completed"`
		RequestThroughput float64 `json:"request_throughput"`
		MedianTTFT        float64 `json:"median_ttft_ms"`
		MedianTPOT        float64 `json:"median_tpot_ms"`
	}
	raw, err := os.ReadFile(filepath.Join(b.dir, name+".json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(raw, &doc))
	require.Equal(t, prompts, doc.Completed)
	return benchRun{doc.RequestThroughput, doc.MedianTTFT, doc.MedianTPOT}
}

// median of f over the runs.
func median(rs []benchRun, f func(benchRun) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	sort.Float64s(v)
	if len(v)%2 == 0 {
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return v[len(v)/2]
}

// TestBenchAgreesWithVLLMBench runs llm-agent bench and vllm bench serve (from the same vLLM
// install) on the same endpoint and workload, alternating, and checks that they agree on
// request throughput and median TTFT within 10%.
//
// Two things make a naive comparison on this small CPU machine fail without either tool being
// wrong, and the test takes both out:
//   - The machine drifts: one tool's own runs differed by a third within a test in CI. So the
//     runs are paired (each round runs both tools back to back, in alternating order), and the
//     test compares the median of the rounds' ratios.
//   - vllm bench serve's Python client adds its own time to every TTFT it measures (1.9 to
//     2.6 ms in docs/data/bench-overhead.txt), which is a tenth of the tiny model's TTFT here.
//     So each tool also measures the stand-in engine, whose TTFT is known exactly (one token's
//     delay), in the same shape of load; what a tool measures above it is that tool's own
//     overhead, and TTFT is compared with each tool's own overhead taken off. The stand-in
//     runs also check both tools against a known truth: neither may report a TTFT below the
//     engine's, nor a throughput above what the engine can give.
//
// Raw output goes to $LLM_AGENT_BENCH_OUT when set (docs/data keeps a copy).
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
	outDir := os.Getenv("LLM_AGENT_BENCH_OUT")
	if outDir == "" {
		outDir = t.TempDir()
	}
	require.NoError(t, os.MkdirAll(outDir, 0o755))
	keyFile := filepath.Join(t.TempDir(), "key")
	require.NoError(t, os.WriteFile(keyFile, []byte(j.apiKey(c)+"\n"), 0o600))
	// The same kind of text prompts as vllm bench serve's random dataset, made its way with the
	// model's tokenizer: random ids, decoded, re-encoded and cut to the length, decoded again.
	// (llm-agent bench's own random prompts are token ids, which the server does not tokenize;
	// they are run too, for the exact input length.)
	const prompts = 160
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
`, tiny(t), texts, strconv.Itoa(prompts), benchInputLen)
	if out, err := gen.CombinedOutput(); err != nil {
		t.Fatalf("text prompts: %v\n%s", err, out)
	}
	real := benchTools{t: t, dir: outDir, core: strconv.Itoa(cpus - 1), keyFile: keyFile, url: c.BaseURL, model: c.ServedModelName, texts: texts}

	// A first run of each, not counted, warms the engine (and the page cache of vLLM's client).
	real.ours("ids", prompts, 99, "--input-len", benchInputLen)
	real.theirs(prompts, 99)
	const rounds = 5
	var ids, a, b []benchRun
	start := time.Now()
	for i := 0; i < rounds; i++ {
		var x, y benchRun
		if i%2 == 0 {
			x = real.text(prompts, i)
			y = real.theirs(prompts, i)
		} else {
			y = real.theirs(prompts, i)
			x = real.text(prompts, i)
		}
		a, b = append(a, x), append(b, y)
		ids = append(ids, real.ours("ids", prompts, i, "--input-len", benchInputLen))
		t.Logf("BENCH bench-vs-vllm round %d: llm-agent bench text prompts %.3f req/s, median TTFT %.2f ms; vllm bench serve %.3f req/s, median TTFT %.2f ms; llm-agent bench token-id prompts %.3f req/s, median TTFT %.2f ms",
			i, x.throughput, x.medianTTFT, y.throughput, y.medianTTFT, ids[i].throughput, ids[i].medianTTFT)
	}
	tput := func(r benchRun) float64 { return r.throughput }
	ttft := func(r benchRun) float64 { return r.medianTTFT }
	tpot := func(r benchRun) float64 { return r.medianTPOT }
	t.Logf("BENCH bench-vs-vllm %d rounds (%.0f s), medians: request throughput %.3f vs %.3f req/s; median TTFT %.2f vs %.2f ms; token-id prompts %.3f req/s, median TTFT %.2f ms (the server tokenizes no text)",
		rounds, time.Since(start).Seconds(), median(a, tput), median(b, tput), median(a, ttft), median(b, ttft), median(ids, tput), median(ids, ttft))

	// The job ends before the stand-in takes core 0, and before the next test: a job still
	// ending holds node 1, and the next single-node job would land elsewhere.
	require.NoError(t, exec.Command("scancel", j.id).Run())
	j.waitState(jobfiles.StateStopped, drainBound)
	requireNoProcesses(t, drainBound)
	j.waitEnded(drainBound) // Slurm has let go of node 1, not only its processes

	// Each tool's own overhead, against the stand-in engine at the real engine's pace: each
	// token (the first too) after the real engine's median time per output token.
	delay := time.Duration(median(append(append([]benchRun{}, a...), b...), tpot) * float64(time.Millisecond)).Round(100 * time.Microsecond)
	fake := startStandIn(t, delay, j.apiKey(c))
	standIn := real
	standIn.url, standIn.model = fake+"/v1", "tiny"
	standIn.dir = filepath.Join(outDir, "stand-in")
	require.NoError(t, os.MkdirAll(standIn.dir, 0o755))
	standIn.ours("ids", 64, 99, "--input-len", benchInputLen)
	standIn.theirs(64, 99)
	// Paired and alternating too: a busy core slows the stand-in's timers as much as the engine.
	var sa, sb []benchRun
	for i := 0; i < 3; i++ {
		if i%2 == 0 {
			sa = append(sa, standIn.text(prompts, i))
			sb = append(sb, standIn.theirs(prompts, i))
		} else {
			sb = append(sb, standIn.theirs(prompts, i))
			sa = append(sa, standIn.text(prompts, i))
		}
	}
	d := float64(delay) / float64(time.Millisecond)
	ceiling := float64(benchConcurrency) / (d * 32 / 1000) // requests per second with no overhead at all
	overA, overB := median(sa, ttft)-d, median(sb, ttft)-d
	t.Logf("BENCH bench-vs-vllm stand-in at %.1f ms per token (TTFT %.1f ms, at most %.2f req/s): llm-agent bench %.3f req/s, median TTFT %.2f ms (own overhead %.2f ms); vllm bench serve %.3f req/s, median TTFT %.2f ms (own overhead %.2f ms)",
		d, d, ceiling, median(sa, tput), median(sa, ttft), overA, median(sb, tput), median(sb, ttft), overB)
	for _, r := range append(append([]benchRun{}, sa...), sb...) {
		assert.GreaterOrEqual(t, r.medianTTFT, d, "no tool can see the first token before the engine sends it")
		// A client's own share of TTFT is a few ms (1 to 4.4 here); a TTFT taken at the wrong
		// moment (the response's end, say) would be near the whole request, 32 tokens long.
		assert.LessOrEqual(t, r.medianTTFT, d+10, "a TTFT far above the engine's first token is measured from the wrong moment")
		assert.LessOrEqual(t, r.throughput, ceiling*1.01, "no tool can finish requests faster than the engine")
		// The engine's timers overshoot on a busy core (about 1 ms a token on this machine, more
		// on a slower one), so the throughput stays below the ceiling. A tool that kept half its
		// streams idle would be at half the ceiling or below.
		assert.GreaterOrEqual(t, r.throughput, ceiling*0.55, "a tool that cannot keep 4 streams busy at this pace is broken")
	}

	// The median over the rounds of each round's ratio, and how far the rounds' ratios spread.
	ratioOf := func(a, b []benchRun, f func(benchRun) float64, offA, offB float64) (m, spread float64) {
		rs := make([]float64, len(a))
		for i := range a {
			rs[i] = (f(a[i]) - offA) / (f(b[i]) - offB)
		}
		sort.Float64s(rs)
		return rs[len(rs)/2], (rs[len(rs)-1] - rs[0]) / 2
	}
	// The stand-in's pace is steady: here the two tools' throughputs must agree closely, within
	// 5%, or within the rounds' own spread up to 15% where the machine was that noisy.
	r, spread := ratioOf(sa, sb, tput, 0, 0)
	diff := math.Abs(r - 1)
	t.Logf("BENCH bench-vs-vllm stand-in request throughput: median ratio over 3 rounds %.3f (the rounds' ratios spread ±%.1f%%)", r, 100*spread)
	assert.True(t, diff < 0.05 || (diff <= spread && diff < 0.15),
		"request throughput against the stand-in engine: the tools differ by %.1f%% (rounds spread ±%.1f%%)", 100*diff, 100*spread)

	// The comparison on the real engine.
	ratio := func(f func(benchRun) float64, offA, offB float64) (m, spread float64) {
		return ratioOf(a, b, f, offA, offB)
	}
	for _, m := range []struct {
		name       string
		f          func(benchRun) float64
		offA, offB float64
	}{
		{"request throughput", tput, 0, 0},
		{"median TTFT, each tool's own overhead taken off", ttft, overA, overB},
	} {
		r, spread := ratio(m.f, m.offA, m.offB)
		diff := math.Abs(r - 1)
		t.Logf("BENCH bench-vs-vllm %s: median ratio over %d rounds %.3f (differ by %.1f%%; the rounds' ratios spread ±%.1f%%)", m.name, rounds, r, 100*diff, 100*spread)
		// The exact checks are the stand-in's above, against a known truth and a steady pace.
		// On the real engine this 2-core VM drifts: the rounds' ratios have spread ±14% to ±38%
		// in CI, and one run's vllm bench serve slowed by a fifth for three rounds in a row while
		// llm-agent bench did not. So here the tools must agree within 10%, or within the rounds'
		// own spread plus 10% and under 30%: a wrong definition (TTFT from the response's end,
		// throughput over the wrong time) shows as a difference far beyond that.
		assert.True(t, diff < 0.10 || (diff <= spread+0.10 && diff < 0.30),
			"%s: llm-agent bench and vllm bench serve differ by %.1f%%, more than 10%% and more than the rounds' own spread (±%.1f%%) plus 10%%", m.name, 100*diff, 100*spread)
	}
	raw, _ := ratio(ttft, 0, 0)
	t.Logf("BENCH bench-vs-vllm median TTFT as measured, overhead included: median ratio %.3f", raw)
}

// startStandIn runs the stand-in engine on loopback, on core 0, with each token (the first
// too) after delay, and returns its base URL.
func startStandIn(t *testing.T, delay time.Duration, key string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	require.NoError(t, ln.Close())
	cmd := exec.Command("taskset", "-c", "0", suite.fakeBin, "serve", tiny(t), "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", port)
	cmd.Env = append(os.Environ(), "FAKEVLLM_TOKEN_DELAY="+delay.String(), "VLLM_API_KEY="+key)
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	url := "http://127.0.0.1:" + port
	require.Eventually(t, func() bool {
		resp, err := http.Get(url + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 30*time.Second, 50*time.Millisecond, "the stand-in engine did not start: %s", &log)
	return url
}
