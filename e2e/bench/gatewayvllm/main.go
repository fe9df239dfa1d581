// Command gatewayvllm measures what the agent's gateway costs with a real engine: vLLM's own
// `vllm bench serve` against the CPU build of vLLM serving the tiny test model, once through
// the gateway and once direct, in alternating rounds of one run.
//
// Two agents run side by side on this machine, each with its own engine of the same build, model
// and settings: one with its gateway on the public port (the engine behind it on a Unix socket),
// one with --gateway=false (the engine itself on the public port). Only one engine is busy at a
// time. By default nothing is pinned, as in the first measurement: engine, gateway and
// client share the machine's cores. With -pin, both engines run on core 0 with one OpenMP thread
// each, the benchmark client on the last core, and the agents (so the gateway) on any core.
//
// It needs the vLLM CPU build (make e2e-vllm installs it into .venv) and bin/llm-agent (make
// build); it runs from the repository root and sends traffic to loopback only. -smoke runs one
// short round and checks the results for sanity (make e2e-vllm runs it).
//
//	go run ./e2e/bench/gatewayvllm -rounds 6 -prompts 60 -out docs/data/gateway-vllm-issue19
//	go run ./e2e/bench/gatewayvllm -smoke
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/shirou/gopsutil/v4/process"
)

// The workload of the first measurement: random 64 tokens in, 32 out, 4 at once.
const (
	inputLen    = "64"
	outputLen   = "32"
	concurrency = "4"
	served      = "tiny"
)

// target is one way to the engine.
type target struct {
	name, url, keyFile string
	key                string // what keyFile holds
	agent              *exec.Cmd
	ended              chan struct{} // closed once the agent has ended and been waited for
}

// run is what vllm bench serve reports of one run.
type run struct {
	Completed         int     `json:"completed"`
	RequestThroughput float64 `json:"request_throughput"`
	MedianTTFT        float64 `json:"median_ttft_ms"`
	MedianTPOT        float64 `json:"median_tpot_ms"`
	P99TPOT           float64 `json:"p99_tpot_ms"`
}

func main() {
	rounds := flag.Int("rounds", 6, "rounds; each runs both targets, in alternating order (3 at least to judge the goals)")
	prompts := flag.Int("prompts", 60, "prompts per run")
	venv := flag.String("venv", ".venv", "the virtual environment with the vLLM CPU build")
	model := flag.String("model", "", "the model directory (default: the tiny test model, made by e2e/make-tiny-model.py)")
	out := flag.String("out", "", "directory for vllm bench serve's raw output (default: a temporary one, removed)")
	smoke := flag.Bool("smoke", false, "one round of 20 prompts, checked for sanity; exit 1 if a check fails")
	pin := flag.Bool("pin", false, "the engines on core 0 with one OpenMP thread, the client on the last core")
	flag.Parse()
	if *smoke {
		*rounds, *prompts = 1, 20
	}
	// Interrupted, it still stops the agents it started (measure's cleanup) before it exits.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := measure(ctx, *rounds, *prompts, *venv, *model, *out, *smoke, *pin); err != nil {
		fmt.Fprintln(os.Stderr, "gatewayvllm:", err)
		os.Exit(1)
	}
}

func measure(ctx context.Context, rounds, prompts int, venv, model, out string, smoke, pin bool) error {
	if pin && runtime.NumCPU() < 2 {
		return errors.New("-pin needs two cores: one for the engines, one for the client")
	}
	root, err := os.Getwd()
	if err != nil {
		return err
	}
	venv, _ = filepath.Abs(venv)
	vllm := filepath.Join(venv, "bin", "vllm")
	if _, err := os.Stat(vllm); err != nil {
		return fmt.Errorf("no vLLM in %s (make e2e-vllm installs the CPU build): %w", venv, err)
	}
	work, err := os.MkdirTemp("", "gatewayvllm-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	if out == "" {
		out = filepath.Join(work, "out")
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	if model == "" {
		model = filepath.Join(work, "tiny-llama")
		if b, err := exec.Command(filepath.Join(venv, "bin", "python"), filepath.Join(root, "e2e", "make-tiny-model.py"), model).CombinedOutput(); err != nil {
			return fmt.Errorf("make-tiny-model.py: %w\n%s", err, b)
		}
	}

	var targets []*target
	defer func() {
		// Each agent drains and stops its engine; one that has not within a minute is killed,
		// with all it started.
		for _, t := range targets {
			syscall.Kill(-t.agent.Process.Pid, syscall.SIGTERM)
		}
		for _, t := range targets {
			select {
			case <-t.ended:
			case <-time.After(time.Minute):
				syscall.Kill(-t.agent.Process.Pid, syscall.SIGKILL)
				<-t.ended
			}
		}
	}()
	for i, name := range []string{"gateway", "direct"} {
		port := 18301 + 2*i
		t := &target{name: name, url: "http://127.0.0.1:" + strconv.Itoa(port), keyFile: filepath.Join(work, name+".key"),
			key: "sk-bench-" + name + "-0123456789abcdef"}
		if err := os.WriteFile(t.keyFile, []byte(t.key+"\n"), 0o600); err != nil {
			return err
		}
		args := []string{"run", "--model", model, "--served-model-name", served, "--vllm-bin", vllm,
			"--state-dir", filepath.Join(work, name), "--targets-dir", "none", "--port", strconv.Itoa(port),
			"--metrics-port", strconv.Itoa(port + 1), "--api-key-file", t.keyFile, "--log-level", "warn",
			"--tensor-parallel-size", "1", "--pipeline-parallel-size", "1", "--launcher", "mp",
			"--vllm-arg=--max-model-len", "--vllm-arg=512", "--vllm-arg=--gpu-memory-utilization", "--vllm-arg=0.15",
			"--gateway=" + strconv.FormatBool(name == "gateway")}
		t.agent = exec.Command(filepath.Join(root, "bin", "llm-agent"), args...)
		t.agent.Env = os.Environ()
		if pin {
			t.agent.Env = append(t.agent.Env, "VLLM_CPU_OMP_THREADS_BIND=0") // the engine's one OpenMP thread, on core 0
		}
		t.agent.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		log, err := os.Create(filepath.Join(work, name+".log"))
		if err != nil {
			return err
		}
		defer log.Close()
		t.agent.Stdout, t.agent.Stderr = log, log
		if err := t.agent.Start(); err != nil {
			return err
		}
		t.ended = make(chan struct{})
		go func() {
			t.agent.Wait()
			close(t.ended)
		}()
		targets = append(targets, t)
	}
	for _, t := range targets {
		if err := waitServing(ctx, t, 10*time.Minute); err != nil {
			b, _ := os.ReadFile(filepath.Join(work, t.name+".log"))
			return fmt.Errorf("%s: %w\n%s", t.name, err, tail(string(b), 20))
		}
	}
	// With -pin: every process the agents started (the engines and theirs) onto core 0, the
	// client onto the last.
	cores := "0-" + strconv.Itoa(runtime.NumCPU()-1)
	if pin {
		for _, t := range targets {
			if err := pinDescendants(int32(t.agent.Process.Pid), "0"); err != nil {
				return err
			}
		}
		cores = strconv.Itoa(runtime.NumCPU() - 1)
	}
	bench := func(t *target, name string, seed int) (run, error) {
		cmd := exec.CommandContext(ctx, "taskset", "-c", cores, vllm, "bench", "serve", "--backend", "vllm",
			"--base-url", t.url, "--endpoint", "/v1/completions", "--model", model, "--served-model-name", served,
			"--tokenizer", model, "--dataset-name", "random", "--random-input-len", inputLen, "--random-output-len", outputLen,
			"--ignore-eos", "--num-prompts", strconv.Itoa(prompts), "--max-concurrency", concurrency, "--seed", strconv.Itoa(seed),
			"--save-result", "--result-dir", out, "--result-filename", name+".json", "--disable-tqdm")
		cmd.Env = append(os.Environ(), "OPENAI_API_KEY="+t.key)
		b, err := cmd.CombinedOutput()
		if werr := os.WriteFile(filepath.Join(out, name+".txt"), b, 0o644); werr != nil {
			return run{}, werr
		}
		if err != nil {
			return run{}, fmt.Errorf("vllm bench serve against %s: %w\n%s", t.name, err, tail(string(b), 20))
		}
		raw, err := os.ReadFile(filepath.Join(out, name+".json"))
		if err != nil {
			return run{}, err
		}
		var r run
		if err := json.Unmarshal(raw, &r); err != nil {
			return run{}, err
		}
		if r.Completed != prompts || r.RequestThroughput <= 0 || r.MedianTPOT <= 0 || r.MedianTTFT <= 0 {
			return r, fmt.Errorf("%s: %d of %d prompts completed, %.2f req/s, median TPOT %.3f ms, median TTFT %.3f ms",
				name, r.Completed, prompts, r.RequestThroughput, r.MedianTPOT, r.MedianTTFT)
		}
		return r, nil
	}
	fmt.Printf("vllm bench serve, random %s tokens in / %s out, concurrency %s, %d prompts a run, %d rounds; pinned: %v\n",
		inputLen, outputLen, concurrency, prompts, rounds, pin)
	// A first run of each, not counted, warms the engines.
	for _, t := range targets {
		if _, err := bench(t, "warmup-"+t.name, 99); err != nil {
			return err
		}
	}
	results := map[string][]run{}
	for r := 0; r < rounds; r++ {
		order := []*target{targets[0], targets[1]}
		if r%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		for _, t := range order {
			res, err := bench(t, fmt.Sprintf("round%d-%s", r+1, t.name), r)
			if err != nil {
				return err
			}
			results[t.name] = append(results[t.name], res)
			fmt.Printf("round %d %-8s %7.2f req/s  median TTFT %7.2f ms  median TPOT %6.3f ms  p99 TPOT %6.3f ms\n",
				r+1, t.name, res.RequestThroughput, res.MedianTTFT, res.MedianTPOT, res.P99TPOT)
		}
	}
	g, d := results["gateway"], results["direct"]
	tput := func(x run) float64 { return x.RequestThroughput }
	tpot := func(x run) float64 { return x.MedianTPOT }
	ratio := median(g, tput) / median(d, tput)
	added := median(g, tpot) - median(d, tpot)
	fmt.Printf("\nmedians over %d rounds of %d prompts: gateway %.2f req/s, direct %.2f req/s (gateway/direct %.3f: %+.1f%%); median TPOT gateway %.3f ms, direct %.3f ms (%+.3f ms)\n",
		rounds, prompts, median(g, tput), median(d, tput), ratio, 100*(ratio-1), median(g, tpot), median(d, tpot), added)
	// Each round's own comparison (its two runs back to back), and how far the rounds spread:
	// a goal finer than the spread cannot be told met or missed from these runs.
	var ratios, diffs []float64
	for i := range g {
		ratios = append(ratios, g[i].RequestThroughput/d[i].RequestThroughput)
		diffs = append(diffs, g[i].MedianTPOT-d[i].MedianTPOT)
	}
	rm, rs := medianSpread(ratios)
	dm, ds := medianSpread(diffs)
	fmt.Printf("paired by round: throughput gateway/direct median %.3f (rounds spread ±%.1f%%); median TPOT gateway-direct median %+.3f ms (rounds spread ±%.3f ms)\n",
		rm, 100*rs, dm, ds)
	if rounds < 3 {
		fmt.Printf("goal: not judged: %d rounds show no spread to judge a goal by (3 at least)\n", rounds)
	} else {
		fmt.Printf("goal: throughput within 3%% of direct: %s; median TPOT within 0.05 ms of direct: %s\n",
			verdict(rm >= 0.97, rs > 0.03), verdict(dm <= 0.05, ds > 0.05))
	}
	if smoke {
		fmt.Println("gatewayvllm smoke: ok")
	}
	return nil
}

// pinDescendants binds every thread of every descendant of pid to the cores in list.
func pinDescendants(pid int32, list string) error {
	p, err := process.NewProcess(pid)
	if err != nil {
		return err
	}
	children, _ := p.Children() // none is an error too
	for _, c := range children {
		if out, err := exec.Command("taskset", "-a", "-p", "-c", list, strconv.Itoa(int(c.Pid))).CombinedOutput(); err != nil {
			return fmt.Errorf("taskset %d: %w: %s", c.Pid, err, out)
		}
		if err := pinDescendants(c.Pid, list); err != nil {
			return err
		}
	}
	return nil
}

// verdict says met or missed, and that the noise is larger than the goal where it is.
func verdict(ok, noisy bool) string {
	v := "missed"
	if ok {
		v = "met"
	}
	if noisy {
		v += " (within the rounds' spread, wider than the goal: not resolved on this machine)"
	}
	return v
}

// medianSpread returns the median of xs and half their range.
func medianSpread(xs []float64) (float64, float64) {
	v := append([]float64(nil), xs...)
	sort.Float64s(v)
	m := v[len(v)/2]
	if len(v)%2 == 0 {
		m = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return m, (v[len(v)-1] - v[0]) / 2
}

// waitServing waits until the target answers /v1/models with its key, as a client would.
func waitServing(ctx context.Context, t *target, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	c := &http.Client{Timeout: 5 * time.Second}
	for time.Now().Before(deadline) {
		req, _ := http.NewRequest(http.MethodGet, t.url+"/v1/models", nil)
		req.Header.Set("Authorization", "Bearer "+t.key)
		if resp, err := c.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-t.ended:
			return errors.New("the agent ended before it served")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	return fmt.Errorf("not serving after %s", timeout)
}

func median(rs []run, f func(run) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	m, _ := medianSpread(v)
	return m
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
