// Command timetoready measures, on the mini-cluster, how long a job takes from starting to Ray
// having all nodes and to the engine being ready: llm-agent's multinode.sbatch against the
// fixed-sleep launch of Ray's Slurm documentation (e2e/bench/ray-docs-baseline.sbatch), run
// alternately with the same Ray, the same engine (fakevllm) and the same observer. After each
// job is cancelled it also counts the processes and /tmp/ray directories left on the nodes.
//
// The agent's readiness is read as a client reads it: the connection file says ready, then a
// request through the gateway with the job's key lists the model. -smoke runs each launcher
// once on two nodes and checks the results for sanity (make test runs it), not for speed.
//
//	go run ./e2e/bench/timetoready -runs 5
//	go run ./e2e/bench/timetoready -smoke
package main

import (
	"bufio"
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/llm-agent/llm-agent/agent"
	"github.com/llm-agent/llm-agent/clock"
	"github.com/llm-agent/llm-agent/healthcheck"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/ray"
	"github.com/llm-agent/llm-agent/vllm"
)

//go:embed observe.py
var observer string

// launchers are what the benchmark compares: the agent, the fixed-sleep launch of Ray's Slurm
// documentation, and Ray's own symmetric-run; each baseline is e2e/bench/NAME.sbatch.
var launchers = []string{"llm-agent", "ray-docs-baseline", "ray-symmetric-baseline"}

const (
	baselineKey  = "sk-baseline-bench"
	baselinePort = 8000
	timeout      = 3 * time.Minute
)

// nodeCount is the nodes of every job, for the report.
var nodeCount int

type config struct {
	root, venv, agentBin, fakeBin, work string
	nodes                               int
}

type result struct {
	mode              string
	start             time.Time
	allNodes, ready   time.Duration
	leftover          int
	tmpDirs           []string
	err               error
	leftoverProcesses []string
}

func main() {
	runs := flag.Int("runs", 5, "runs of each launcher")
	nodes := flag.Int("nodes", 3, "nodes per job")
	smoke := flag.Bool("smoke", false, "one run of each launcher on two nodes, checked for sanity; exit 1 if a check fails")
	launcherList := flag.String("launchers", strings.Join(launchers, ","), "launchers to compare, run in turn")
	flag.Parse()
	modes := strings.Split(*launcherList, ",")
	for _, m := range modes {
		if !slices.Contains(launchers, m) {
			fatal(fmt.Errorf("-launchers: %q is none of %v", m, launchers))
		}
	}
	if *smoke {
		*runs, *nodes = 1, 2
	}
	nodeCount = *nodes
	root, _ := os.Getwd()
	cfg := config{root: root, venv: envOr("LLM_AGENT_VENV", filepath.Join(root, ".venv")),
		agentBin: filepath.Join(root, "bin", "llm-agent"), fakeBin: filepath.Join(root, "bin", "fakevllm"), nodes: *nodes}
	cfg.work = "/var/tmp/llm-agent-bench"
	if err := os.MkdirAll(cfg.work, 0o755); err != nil {
		fatal(err)
	}
	var all []result
	for i := 0; i < *runs; i++ {
		for _, mode := range modes {
			r := runOnce(cfg, mode)
			all = append(all, r)
			if r.err != nil {
				fmt.Printf("run %d %-18s error: %v\n", i+1, mode, r.err)
				continue
			}
			fmt.Printf("run %d %-18s all nodes %6.2fs  ready %6.2fs  left after scancel: %d processes, tmp dirs %v\n",
				i+1, mode, r.allNodes.Seconds(), r.ready.Seconds(), r.leftover, r.tmpDirs)
			for _, p := range r.leftoverProcesses {
				fmt.Println("    left:", p)
			}
		}
	}
	report(all, modes)
	if *smoke {
		if problems := sane(all, modes); len(problems) > 0 {
			for _, p := range problems {
				fmt.Fprintln(os.Stderr, "timetoready smoke:", p)
			}
			os.Exit(1)
		}
		fmt.Println("timetoready smoke: ok")
	}
}

// sane checks results for what must hold of any run, however fast: no error, all nodes in Ray
// no later than ready, within the timeout, nothing left behind.
func sane(all []result, modes []string) []string {
	var problems []string
	seen := map[string]bool{}
	for _, r := range all {
		seen[r.mode] = true
		switch {
		case r.err != nil:
			problems = append(problems, fmt.Sprintf("%s: %v", r.mode, r.err))
		case r.allNodes <= 0 || r.ready <= 0 || r.ready > timeout:
			problems = append(problems, fmt.Sprintf("%s: all nodes %s, ready %s: not a time to ready", r.mode, r.allNodes, r.ready))
		case r.allNodes > r.ready:
			problems = append(problems, fmt.Sprintf("%s: ready (%s) before Ray had all nodes (%s)", r.mode, r.ready, r.allNodes))
		case r.mode == "llm-agent" && (r.leftover > 0 || len(r.tmpDirs) > 0):
			problems = append(problems, fmt.Sprintf("%s: left %d processes and %v after scancel", r.mode, r.leftover, r.tmpDirs))
		}
	}
	for _, m := range modes {
		if !seen[m] {
			problems = append(problems, m+": no run")
		}
	}
	return problems
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "timetoready:", err)
	os.Exit(1)
}

// runOnce submits one job, observes it to ready, cancels it and inspects what it left behind.
func runOnce(cfg config, mode string) result {
	r := result{mode: mode}
	dir, err := os.MkdirTemp(cfg.work, mode+"-")
	if err != nil {
		return result{mode: mode, err: err}
	}
	model := filepath.Join(dir, "models", "tiny")
	os.MkdirAll(model, 0o755)
	env := append(os.Environ(), "HOME="+filepath.Join(dir, "home"), "LLM_AGENT_VENV="+cfg.venv,
		"LLM_AGENT_BIN="+cfg.agentBin, "LLM_AGENT_VLLM_BIN="+cfg.fakeBin, "LLM_AGENT_SERVED_MODEL_NAME=tiny",
		"BASELINE_ENGINE="+cfg.fakeBin, "BASELINE_MODEL="+model, "BASELINE_KEY="+baselineKey,
		"BASELINE_PORT="+strconv.Itoa(baselinePort))
	args := []string{"--parsable", "-N", strconv.Itoa(cfg.nodes), "--gpus-per-node=2", "--cpus-per-task=1",
		"-D", dir, "-o", filepath.Join(dir, "job-%j.out")}
	if mode == "llm-agent" {
		args = append(args, filepath.Join(cfg.root, "slurm-scripts", "multinode.sbatch"), "--model", model)
	} else {
		args = append(args, filepath.Join(cfg.root, "e2e", "bench", mode+".sbatch"))
	}
	cmd := exec.Command("sbatch", args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		r.err = fmt.Errorf("sbatch: %v: %s", err, out)
		return r
	}
	id := strings.TrimSpace(string(out))
	defer exec.Command("scancel", id).Run()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	if r.start, err = waitRunning(ctx, id); err != nil {
		r.err = err
		return r
	}
	stateDir := filepath.Join(dir, "home", ".llm-agent", "jobs", id)
	nodesAt := make(chan time.Time, 1)
	go func() { nodesAt <- observeRay(ctx, cfg, mode, stateDir) }()
	readyAt, err := observeReady(ctx, mode, stateDir)
	if err != nil {
		r.err = fmt.Errorf("job %s: %w", id, err)
		return r
	}
	all := <-nodesAt
	if all.IsZero() {
		r.err = fmt.Errorf("job %s: ray never had all nodes", id)
		return r
	}
	r.allNodes, r.ready = all.Sub(r.start), readyAt.Sub(r.start)

	// Cancel and wait past Slurm's KillWait (30 s) before looking for leftovers.
	exec.Command("scancel", id).Run()
	deadline := time.Now().Add(40 * time.Second)
	for time.Now().Before(deadline) {
		if len(nodeProcesses(cfg.nodes)) == 0 && jobEnded(id) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	r.leftoverProcesses = nodeProcesses(cfg.nodes)
	r.leftover = len(r.leftoverProcesses)
	r.tmpDirs = tmpLeftovers(cfg.nodes)
	cleanNodes(cfg.nodes)
	return r
}

// waitRunning returns when squeue first shows the job running.
func waitRunning(ctx context.Context, id string) (time.Time, error) {
	for {
		out, _ := exec.Command("squeue", "-h", "-j", id, "-o", "%T").Output()
		if strings.TrimSpace(string(out)) == "RUNNING" {
			return time.Now(), nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, errors.New("job never ran")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// observeRay runs a Python observer that polls the GCS every 50 ms and reports when all nodes
// are alive.
func observeRay(ctx context.Context, cfg config, mode, stateDir string) time.Time {
	gcs := fmt.Sprintf("10.77.0.1:%d", 6379)
	if mode == "llm-agent" {
		for {
			rv, err := jobfiles.ReadRendezvous(stateDir)
			if err == nil {
				gcs = rv.RayAddress()
				break
			}
			select {
			case <-ctx.Done():
				return time.Time{}
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	cmd := exec.CommandContext(ctx, filepath.Join(cfg.venv, "bin", "python"), "-c", observer, gcs, strconv.Itoa(cfg.nodes))
	if mode == "llm-agent" {
		// The job's Ray cluster wants its token, as every client of it does.
		cmd.Env = ray.WithAuth(os.Environ(), filepath.Join(stateDir, agent.RayTokenFile))
	}
	out, err := cmd.StdoutPipe()
	if err != nil || cmd.Start() != nil {
		return time.Time{}
	}
	defer cmd.Wait()
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "ALL" {
			sec, _ := strconv.ParseFloat(f[1], 64)
			return time.Unix(0, int64(sec*1e9))
		}
	}
	return time.Time{}
}

// observeReady polls every 50 ms until the endpoint serves, the way a client finds out: for
// the agent, the connection file says ready and a request through the gateway with the job's
// key lists the model; for the baseline, which has no such file, vLLM's /health answers and
// /v1/models lists the model.
func observeReady(ctx context.Context, mode, stateDir string) (time.Time, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var failed error // a job that failed: no use waiting
	var ready func(ctx context.Context) error
	if mode == "llm-agent" {
		path := filepath.Join(stateDir, jobfiles.ConnectionFile)
		ready = func(ctx context.Context) error {
			c, err := jobfiles.ReadConnection(path)
			switch {
			case err != nil:
				return err
			case c.State == jobfiles.StateFailed:
				failed = fmt.Errorf("the job failed: %s", c.Reason)
				cancel()
				return failed
			case c.State != jobfiles.StateReady:
				return fmt.Errorf("state %s", c.State)
			}
			key, err := os.ReadFile(c.APIKeyFile)
			if err != nil {
				return err
			}
			return listsModel(ctx, c.BaseURL+"/models", strings.TrimSpace(string(key)))
		}
	} else {
		eng := vllm.Probe{BaseURL: fmt.Sprintf("http://10.77.0.1:%d", baselinePort), APIKey: baselineKey}
		ready = func(ctx context.Context) error { return eng.Ready(ctx, "tiny") }
	}
	err := healthcheck.WaitReady(ctx, clock.Real{}, 50*time.Millisecond, func(ctx context.Context) error {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		return ready(pctx)
	})
	if failed != nil {
		return time.Time{}, failed
	}
	return time.Now(), err
}

// listsModel asks url (/v1/models) with key and wants the served model "tiny" in the answer.
func listsModel(ctx context.Context, url, key string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"tiny"`) {
		return fmt.Errorf("%s: %d %.100s", url, resp.StatusCode, b)
	}
	return nil
}

func jobEnded(id string) bool {
	out, _ := exec.Command("squeue", "-h", "-j", id, "-o", "%T").Output()
	return strings.TrimSpace(string(out)) == ""
}

// nodeProcesses lists the processes in the nodes' namespaces other than slurmd.
func nodeProcesses(nodes int) []string {
	var left []string
	for i := 1; i <= nodes; i++ {
		out, _ := exec.Command("ip", "netns", "pids", fmt.Sprintf("llmnode%d", i)).Output()
		for _, pid := range strings.Fields(string(out)) {
			b, err := os.ReadFile("/proc/" + pid + "/cmdline")
			if err != nil || len(b) == 0 {
				continue
			}
			c := strings.ReplaceAll(string(b), "\x00", " ")
			if strings.HasPrefix(c, "slurmd ") {
				continue
			}
			left = append(left, fmt.Sprintf("node%d %s %.80s", i, pid, c))
		}
	}
	return left
}

// slurmdRoot returns /proc/PID/root of a node's slurmd, a window on the node's own /tmp.
func slurmdRoot(node int) string {
	out, _ := exec.Command("ip", "netns", "pids", fmt.Sprintf("llmnode%d", node)).Output()
	for _, pid := range strings.Fields(string(out)) {
		if b, _ := os.ReadFile("/proc/" + pid + "/comm"); strings.TrimSpace(string(b)) == "slurmd" {
			return "/proc/" + pid + "/root"
		}
	}
	return ""
}

// tmpLeftovers lists Ray directories left in the nodes' /tmp.
func tmpLeftovers(nodes int) []string {
	var left []string
	for i := 1; i <= nodes; i++ {
		root := slurmdRoot(i)
		if root == "" {
			continue
		}
		for _, pat := range []string{"/tmp/ray", "/tmp/llm-agent-*"} {
			matches, _ := filepath.Glob(root + pat)
			for _, m := range matches {
				left = append(left, fmt.Sprintf("node%d:%s", i, strings.TrimPrefix(m, root)))
			}
		}
	}
	return left
}

// cleanNodes removes what a run left, so the next run starts from the same state. Only the
// mini-cluster's own namespaces are touched.
func cleanNodes(nodes int) {
	for i := 1; i <= nodes; i++ {
		out, _ := exec.Command("ip", "netns", "pids", fmt.Sprintf("llmnode%d", i)).Output()
		for _, pid := range strings.Fields(string(out)) {
			if b, _ := os.ReadFile("/proc/" + pid + "/comm"); strings.TrimSpace(string(b)) != "slurmd" {
				n, _ := strconv.Atoi(pid)
				syscall.Kill(n, syscall.SIGKILL)
			}
		}
		if root := slurmdRoot(i); root != "" {
			os.RemoveAll(root + "/tmp/ray")
			matches, _ := filepath.Glob(root + "/tmp/llm-agent-*")
			for _, m := range matches {
				os.RemoveAll(m)
			}
		}
	}
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func report(all []result, modes []string) {
	type agg struct {
		nodes, ready []float64
		leftover     []int
		tmp          int
		errors       int
	}
	m := map[string]*agg{}
	for _, name := range modes {
		m[name] = &agg{}
	}
	for _, r := range all {
		a := m[r.mode]
		if r.err != nil {
			a.errors++
			continue
		}
		a.nodes = append(a.nodes, r.allNodes.Seconds())
		a.ready = append(a.ready, r.ready.Seconds())
		a.leftover = append(a.leftover, r.leftover)
		if len(r.tmpDirs) > 0 {
			a.tmp++
		}
	}
	fmt.Println()
	fmt.Println("| launcher | nodes | runs | median s to all Ray nodes | median s to ready | runs leaving processes | runs leaving /tmp dirs |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for _, name := range modes {
		a := m[name]
		withProcs := 0
		for _, n := range a.leftover {
			if n > 0 {
				withProcs++
			}
		}
		fmt.Printf("| %s | %d | %d (%d failed) | %.2f | %.2f | %d | %d |\n", name, nodeCount, len(a.ready), a.errors,
			median(a.nodes), median(a.ready), withProcs, a.tmp)
	}
	ag := m["llm-agent"]
	if ag == nil || median(ag.nodes) <= 0 || median(ag.ready) <= 0 {
		return
	}
	for _, name := range modes[1:] {
		bl := m[name]
		fmt.Printf("\n%s / llm-agent: all nodes %.2fx, ready %.2fx\n", name, median(bl.nodes)/median(ag.nodes), median(bl.ready)/median(ag.ready))
	}
}
