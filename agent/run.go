package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/head"
	"github.com/llm-agent/llm-agent/agent/metrics"
	"github.com/llm-agent/llm-agent/agent/modelprep"
	"github.com/llm-agent/llm-agent/agent/node"
	"github.com/llm-agent/llm-agent/agent/ranks"
	"github.com/llm-agent/llm-agent/agent/secrets"
	"github.com/llm-agent/llm-agent/agent/securefs"
	"github.com/llm-agent/llm-agent/agent/worker"
	"github.com/llm-agent/llm-agent/clock"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/slurm"
)

// Errors and names that cmd, e2e and the tools match or read; each is its room's.
var (
	// ErrBadInput is wrapped by errors the user can fix before running again: a missing model,
	// executable or state directory.
	ErrBadInput = config.ErrBadInput
	// ErrRayIncomplete is returned when not every node joined Ray, or published its file, in
	// time.
	ErrRayIncomplete = ranks.ErrIncomplete
	// ErrService is wrapped by a service that cannot be joined: its name, or another job of the
	// same name serving.
	ErrService = jobfiles.ErrService
	// ErrKeyFile is wrapped by errors about the API key file.
	ErrKeyFile = secrets.ErrKeyFile
)

// Files of the state directory that the tools read.
const (
	RayTokenFile   = secrets.RayTokenFile
	ReplicaKeyFile = secrets.ReplicaKeyFile
)

// Run is `llm-agent run`: it checks its input, then runs this node's part of the job until ctx
// ends (a clean drain, nil) or the service fails (an error).
func Run(ctx context.Context, cfg config.Config, deps Deps) error {
	e, err := prepare(ctx, cfg, deps)
	if err != nil {
		return err
	}
	e.Stopping = func() bool { return ctx.Err() != nil }
	// The node-local directory (Ray's temp dir, the engine's socket) is made fresh and private:
	// a directory another user made or filled with links under a predictable name is never used.
	if e.LocalDir, err = securefs.PrivateTemp(os.TempDir(), "llm-agent-"+e.Alloc.JobID+"-"); err != nil {
		return fmt.Errorf("%w: node-local directory: %w", ErrBadInput, err)
	}
	defer os.RemoveAll(e.LocalDir)
	defer modelprep.Unstage(e)
	if err := jobfiles.RecordCrashes(e.StateDir, e.Alloc.Hostname()); err != nil {
		e.Log.Warn("a crash of this agent will not be reported", "error", err)
	}
	if e.Alloc.IsHead() {
		return head.Run(ctx, e, head.Options{Scheduler: deps.Scheduler, Args: deps.Args, Timings: deps.ServiceTimings})
	}
	if err := worker.Run(ctx, e); err != nil {
		// The head reads this when Slurm ends the step for it: the reason reaches the
		// connection file.
		if werr := e.File.End(err.Error()); werr != nil {
			e.Log.Warn("cannot publish why this node ended", "error", werr)
		}
		return err
	}
	return nil
}

// prepare checks everything that can be checked before any process starts, and derives the
// node's environment: the configuration of the model it serves, the plan, the replicas, its
// directories, address and executables. Nothing changes the configuration after.
func prepare(ctx context.Context, cfg config.Config, deps Deps) (*node.Env, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Clock == nil {
		deps.Clock = clock.Real{}
	}
	e := &node.Env{Cfg: cfg, Clock: deps.Clock, Getenv: deps.Getenv, Ports: deps.Ports, Reaper: deps.Reaper, NVML: deps.NVML,
		GPUAccessible: deps.GPUAccessible, Collectors: deps.Collectors, Started: deps.Clock.Now()}
	var err error
	if e.Alloc, err = slurm.AllocationFromEnv(deps.Getenv, deps.Hostname); err != nil {
		return nil, err
	}
	if e.Alloc.Local {
		fmt.Fprintf(deps.Notice, "llm-agent: no Slurm job found (SLURM_JOB_ID is unset); running as a one-node allocation on %s\n", deps.Hostname)
	}
	e.Log = deps.Logger.With("node", e.Alloc.Hostname(), "job", e.Alloc.JobID)
	if cfg.Model == "" && cfg.ModelsFile == "" {
		return nil, fmt.Errorf("%w: --model is required (a model directory or a Hugging Face id)", config.ErrInvalid)
	}
	e.Replicas.Count = cfg.Replicas
	if err := planJob(e); err != nil {
		return nil, err
	}
	if e.StateDir, err = prepareStateDir(e.Cfg.StateDir, deps.Getenv, e.Alloc.JobID); err != nil {
		return nil, err
	}
	if e.Addr, e.Ifname, err = node.Address(deps.Net, e.Cfg.Iface, e.Alloc.Hostname()); err != nil {
		return nil, err
	}
	role := "worker"
	if e.Alloc.IsHead() {
		role = "head"
		learnEndTime(ctx, e, deps.JobEndTime)
	}
	e.File = jobfiles.NewNodeFile(e.StateDir, e.Alloc.Hostname())
	e.State = metrics.NewState(e.Alloc.Hostname(), e.Alloc.JobID, role, e.Alloc.TotalGPUs(), e.Cfg.SUFactor, e.Started, e.Alloc.EndTime)
	return e, nil
}

// planJob decides what this node serves and how: its model among the job's, the model's
// directories, the preset, LoRA, the parallelism or the replicas, and the executables.
func planJob(e *node.Env) error {
	if err := placeModels(e); err != nil {
		return err
	}
	if err := checkModelDirs(e); err != nil {
		return err
	}
	checkOffline(e)
	if err := config.CheckExtraArgs(e.Cfg.VLLMArgs); err != nil {
		return err
	}
	if err := applyPreset(e); err != nil {
		return err
	}
	if err := prepareLoRA(e); err != nil {
		return err
	}
	if err := chooseParallelism(e); err != nil {
		return err
	}
	return e.FindExecutables()
}

// checkOffline decides whether the engine runs offline: when this node's model resolves to a
// local directory, nothing needs the hub, and a compute node often cannot reach it.
func checkOffline(e *node.Env) {
	if _, ok := modelprep.LocalDir(e.Getenv, e.Cfg.Model); ok {
		e.Offline = true
		return
	}
	if e.Alloc.IsHead() {
		e.Log.Warn("the model is not in the local Hugging Face cache: vLLM will download it, which a compute node may not be able to; download it on the login node first (README: Models)",
			"model", e.Cfg.Model, "hf_home", e.Getenv("HF_HOME"))
	}
}

// learnEndTime asks Slurm for the job's end time where its environment did not say it.
func learnEndTime(ctx context.Context, e *node.Env, ask func(ctx context.Context, jobID string) (time.Time, error)) {
	if !e.Alloc.EndTime.IsZero() || e.Alloc.Local || ask == nil {
		return
	}
	if end, err := ask(ctx, e.Alloc.JobID); err != nil {
		e.Log.Debug("job end time unknown", "error", err)
	} else {
		e.Alloc.EndTime = end
	}
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
