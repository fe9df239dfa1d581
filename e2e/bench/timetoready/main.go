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
	"context"
	_ "embed"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
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
