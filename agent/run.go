package agent

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/layout"
	"github.com/llm-agent/llm-agent/agent/metrics"
	"github.com/llm-agent/llm-agent/agent/node"
	"github.com/llm-agent/llm-agent/agent/securefs"
	"github.com/llm-agent/llm-agent/clock"
	"github.com/llm-agent/llm-agent/gpu"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/model"
	"github.com/llm-agent/llm-agent/slurm"
)

// ErrBadInput is wrapped by errors the user can fix before running again: a missing model,
// executable or state directory.
var ErrBadInput = config.ErrBadInput

// agent is one node's agent after its input was checked.
type agent struct {
	cfg      config.Config
	deps     Deps
	log      hclog.Logger
	alloc    slurm.Allocation
	par      layout.Parallelism
	stateDir string
	// localDir is this node's private temporary directory, removed when the agent ends.
	localDir string
	// stopping tells whether the run was asked to stop: a child that ends then is not restarted.
	stopping func() bool
	addr     string
	ifname   string
	vllmBin  string
	rayBin   string
	started  time.Time
	state    *metrics.State
	lora     *loraPlan
	// loraJob is the LoRA plan of the job's model that serves adapters: lora where this
	// node's does; on the head, that of another node's model otherwise.
	loraJob *loraPlan
	// models are where each model runs, in a job that serves several (or one from a models
	// file); empty for one model given by the options.
	models []layout.ModelPlace
	// tensors are each model's GPUs per replica, as the head planned them.
	tensors map[string]int
	// replicas is the job's replica layout: the user's --replicas, the models file's total, the
	// plan's, or the head's rendezvous on a worker. The configuration keeps what was asked.
	replicas layout.Replicas
	// staged is this node's copy of its model under --stage-dir, once made, in use until
	// the agent ends.
	staged *model.Staged
	// offline is set when the model resolves to a local directory: the engine then runs with
	// the Hugging Face hub's offline mode on.
	offline bool
	// node writes this node's file in the state directory, the one writer of it.
	node *jobfiles.NodeFile
}

// Run is `llm-agent run`: it checks its input, then runs this node's part of the job until ctx
// ends (a clean drain, nil) or the service fails (an error).
func Run(ctx context.Context, cfg config.Config, deps Deps) error {
	a, err := prepare(ctx, cfg, deps)
	if err != nil {
		return err
	}
	a.stopping = func() bool { return ctx.Err() != nil }
	// The node-local directory (Ray's temp dir, the engine's socket) is made fresh and private:
	// a directory another user made or filled with links under a predictable name is never used.
	if a.localDir, err = securefs.PrivateTemp(os.TempDir(), "llm-agent-"+a.alloc.JobID+"-"); err != nil {
		return fmt.Errorf("%w: node-local directory: %w", ErrBadInput, err)
	}
	defer os.RemoveAll(a.localDir)
	defer a.unstage()
	if err := a.recordCrashes(); err != nil {
		a.log.Warn("a crash of this agent will not be reported", "error", err)
	}
	if a.alloc.IsHead() {
		return a.runHead(ctx)
	}
	if err := a.runWorker(ctx); err != nil {
		// The head reads this when Slurm ends the step for it: the reason reaches the
		// connection file.
		if werr := a.node.End(err.Error()); werr != nil {
			a.log.Warn("cannot publish why this node ended", "error", werr)
		}
		return err
	}
	return nil
}

// prepare checks everything that can be checked before any process starts.
func prepare(ctx context.Context, cfg config.Config, deps Deps) (*agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Clock == nil {
		deps.Clock = clock.Real{}
	}
	a := &agent{cfg: cfg, deps: deps, started: deps.Clock.Now()}
	var err error
	if a.alloc, err = slurm.AllocationFromEnv(deps.Getenv, deps.Hostname); err != nil {
		return nil, err
	}
	if a.alloc.Local {
		fmt.Fprintf(deps.Notice, "llm-agent: no Slurm job found (SLURM_JOB_ID is unset); running as a one-node allocation on %s\n", deps.Hostname)
	}
	a.log = deps.Logger.With("node", a.alloc.Hostname(), "job", a.alloc.JobID)
	if cfg.Model == "" && cfg.ModelsFile == "" {
		return nil, fmt.Errorf("%w: --model is required (a model directory or a Hugging Face id)", config.ErrInvalid)
	}
	a.replicas.Count = cfg.Replicas
	if err := a.placeModels(); err != nil {
		return nil, err
	}
	cfg = a.cfg // this node's model's
	if err := a.checkModelDirs(); err != nil {
		return nil, err
	}
	a.checkOffline()
	if err := config.CheckExtraArgs(cfg.VLLMArgs); err != nil {
		return nil, err
	}
	if err := a.applyPreset(); err != nil {
		return nil, err
	}
	if err := a.prepareLoRA(); err != nil {
		return nil, err
	}
	if err := a.chooseParallelism(); err != nil {
		return nil, err
	}
	if err := a.findExecutables(); err != nil {
		return nil, err
	}
	if a.stateDir, err = prepareStateDir(cfg.StateDir, deps.Getenv, a.alloc.JobID); err != nil {
		return nil, err
	}
	if a.addr, a.ifname, err = node.Address(deps.Net, cfg.Iface, a.alloc.Hostname()); err != nil {
		return nil, err
	}
	role := "worker"
	if a.alloc.IsHead() {
		role = "head"
		a.learnEndTime(ctx)
	}
	a.node = jobfiles.NewNodeFile(a.stateDir, a.alloc.Hostname())
	a.state = metrics.NewState(a.alloc.Hostname(), a.alloc.JobID, role, a.alloc.TotalGPUs(), cfg.SUFactor, a.started, a.alloc.EndTime)
	return a, nil
}

// learnEndTime asks Slurm for the job's end time where its environment did not say it.
func (a *agent) learnEndTime(ctx context.Context) {
	if !a.alloc.EndTime.IsZero() || a.alloc.Local || a.deps.JobEndTime == nil {
		return
	}
	if end, err := a.deps.JobEndTime(ctx, a.alloc.JobID); err != nil {
		a.log.Debug("job end time unknown", "error", err)
	} else {
		a.alloc.EndTime = end
	}
}

func (a *agent) multiNode() bool { return len(a.alloc.Nodes) > 1 }

// usesRay tells whether the job runs a Ray cluster: over several nodes, unless the launcher is
// vLLM's own multi-node mode.
func (a *agent) usesRay() bool {
	return a.multiNode() && a.cfg.Launcher == config.LauncherRay && !a.replicated()
}

// ranksOnNodes tells whether every node runs a rank of the engine (--launcher mp on several
// nodes).
func (a *agent) ranksOnNodes() bool {
	return a.multiNode() && a.cfg.Launcher == config.LauncherMP && !a.replicated()
}

// findExecutables finds ray, where the job runs a Ray cluster, and vllm on every node that
// runs a rank of the engine.
func (a *agent) findExecutables() error {
	var err error
	if a.usesRay() {
		if a.rayBin, err = exec.LookPath(a.cfg.RayBin); err != nil {
			return fmt.Errorf("%w: ray executable %q not found: run slurm-scripts/setup_environment.sh and activate its environment, or pass --ray-bin", ErrBadInput, a.cfg.RayBin)
		}
	}
	if a.alloc.IsHead() || a.ranksOnNodes() || a.replicated() {
		if a.vllmBin, err = exec.LookPath(a.cfg.VLLMBin); err != nil {
			return fmt.Errorf("%w: vllm executable %q not found: install vLLM into the job's environment (slurm-scripts/setup_environment.sh), or pass --vllm-bin", ErrBadInput, a.cfg.VLLMBin)
		}
	}
	return nil
}

// prepareStateDir creates the job's state directory and proves it writable. A directory that
// already exists must be the user's own and closed to writes by others, and so must the
// subdirectories the agent writes in: anyone who can write there could plant links or files.
func prepareStateDir(dir string, getenv func(string) string, jobID string) (string, error) {
	if dir == "" {
		home := getenv("HOME")
		if home == "" {
			return "", fmt.Errorf("%w: HOME is unset; pass --state-dir", ErrBadInput)
		}
		dir = filepath.Join(home, ".llm-agent", "jobs", jobID)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("%w: state directory %s cannot be created: %w; pass a writable --state-dir on the shared filesystem", ErrBadInput, dir, err)
	}
	for _, d := range []string{dir, filepath.Join(dir, "logs"), filepath.Join(dir, "nodes")} {
		if err := securefs.EnsureDir(d); err != nil {
			return "", fmt.Errorf("%w: state directory: %w", ErrBadInput, err)
		}
	}
	probe, err := os.CreateTemp(dir, ".write-test-*")
	if err != nil {
		return "", fmt.Errorf("%w: state directory %s is not writable: %w; pass a writable --state-dir on the shared filesystem", ErrBadInput, dir, err)
	}
	probe.Close()
	os.Remove(probe.Name())
	return dir, nil
}

// serveMetrics binds the metrics port now, so that a port that cannot be bound fails the start,
// and serves the agent's, the GPUs' and what extra adds until ctx ends.
func (a *agent) serveMetrics(ctx context.Context, port int, extra served) (<-chan error, error) {
	ln, err := net.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		return nil, fmt.Errorf("%w: metrics port %d: %w", node.ErrPort, port, err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewAgentCollector(a.state, nil), metrics.NewProcessCollector(a.state, nil, nil),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if a.deps.NVML != nil {
		g := gpu.New(a.deps.NVML, gpu.Options{Node: a.alloc.Hostname(), Job: a.alloc.JobID, Visible: a.alloc.GPUIDs,
			InJob: !a.alloc.Local, SlowInterval: a.cfg.GPUSampleInterval, Accessible: a.deps.GPUAccessible,
			Logger: a.log.Named("gpu")})
		reg.MustRegister(g)
		go g.Run(ctx)
	}
	for _, c := range append(a.deps.Collectors, extra.collectors...) {
		reg.MustRegister(c)
	}
	errc := make(chan error, 1)
	go func() { errc <- metrics.Serve(ctx, ln, metrics.Handler(reg, a.state, extra.routes)) }()
	return errc, nil
}

// rendezvousID is this launch's identity in the rendezvous: a worker takes only the one its own
// head published for this very launch of the job.
func (a *agent) rendezvousID() jobfiles.Rendezvous {
	return jobfiles.Rendezvous{JobID: a.alloc.JobID, RestartCount: a.alloc.RestartCount, StepID: a.alloc.StepID,
		LaunchID: a.alloc.LaunchID, HeadHost: a.alloc.Head()}
}
