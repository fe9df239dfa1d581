package agent

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/llm-agent/llm-agent/agent/internal/linelog"
	"github.com/llm-agent/llm-agent/agent/securefs"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/ray"
	"github.com/llm-agent/llm-agent/supervisor"
)

// What every child process of a node shares: its log file, its restart policy and service
// options, its metrics; and the node's `ray start`.

// childOutput returns a writer that sends a child's output to its log file in the state
// directory and, line by line, to the agent's log.
func (a *agent) childOutput(name string) (*linelog.Logger, func(), error) {
	path := filepath.Join(a.stateDir, "logs", a.alloc.Hostname()+"."+name+".log")
	f, err := securefs.OpenAppend(path)
	if err != nil {
		return nil, nil, fmt.Errorf("open log of %s: %w", name, err)
	}
	w := linelog.New(f, a.log.Named(name))
	return w, func() { w.Flush(); f.Close() }, nil
}

// policy returns a fresh restart policy from the configuration.
func (a *agent) policy() supervisor.Policy {
	p := supervisor.DefaultPolicy()
	p.Initial = a.cfg.BackoffInitial
	p.Max = a.cfg.BackoffMax
	p.StableAfter = a.cfg.StableAfter
	p.MaxRestarts = a.cfg.MaxRestarts
	p.Window = a.cfg.RestartWindow
	return p
}

// rayService returns the supervised `ray start` of this node.
func (a *agent) rayService(opts ray.StartOptions, extraEnv []string, onEvent func(supervisor.Event)) (*supervisor.Service, func(), error) {
	out, closeOut, err := a.childOutput("ray")
	if err != nil {
		return nil, nil, err
	}
	env := append(a.environ(), ray.Env(a.addr, a.ifname)...)
	env = ray.WithAuth(append(env, extraEnv...), a.rayTokenPath())
	svcOpts := a.serviceOptions("ray")
	svcOpts.Command = func() (supervisor.Options, error) {
		return supervisor.Options{Name: "ray", Path: a.rayBin, Args: ray.StartArgs(opts), Env: env,
			Stdout: out, Stderr: out, Grace: a.cfg.Grace / 5, Reaper: a.deps.Reaper}, nil
	}
	svcOpts.OnEvent = onEvent
	return supervisor.NewService(svcOpts), closeOut, nil
}

// serviceOptions are what every supervised child of the agent shares: the restart policy from
// the configuration, the log, the clock, and the run's stop, which a child's end during it is
// not restarted for. Slurm signals every process of the step at once: a child that ends as a
// stop would may end before this agent has taken the same signal in, so such an end waits up to
// stopSettle for the stop to show.
func (a *agent) serviceOptions(name string) supervisor.ServiceOptions {
	return supervisor.ServiceOptions{Name: name, Policy: a.policy(), Logger: a.log.Named("supervisor").With("proc", name),
		Clock: a.deps.Clock, Stopping: a.stopping, StopSettle: stopSettle}
}

// rayStartOptions returns this node's `ray start` settings for ports.
func (a *agent) rayStartOptions(ports jobfiles.Ports, gcs string) ray.StartOptions {
	return ray.StartOptions{
		Head:                a.alloc.IsHead(),
		NodeAddress:         a.addr,
		GCSAddress:          gcs,
		GCSPort:             ports.RayGCS,
		DashboardPort:       ports.Dashboard,
		ClientPort:          ports.RayClient,
		NodeManagerPort:     ports.NodeManager,
		ObjectManagerPort:   ports.ObjectManager,
		DashboardAgentPort:  ports.DashboardAgent,
		DashboardAgentGRPC:  ports.DashboardAgentGRPC,
		MetricsExportPort:   ports.RayMetrics,
		RuntimeEnvAgentPort: ports.RuntimeEnvAgent,
		MinWorkerPort:       ports.WorkerMin,
		MaxWorkerPort:       ports.WorkerMax,
		NumGPUs:             a.alloc.GPUs,
		NumCPUs:             a.alloc.CPUs,
		TempDir:             a.rayTempDir(),
		IncludeDashboard:    true,
	}
}

// rayTempDir is the node's Ray directory, inside the private node-local directory.
func (a *agent) rayTempDir() string {
	return filepath.Join(a.localDir, "ray")
}

// rayTokenPath is the job's Ray token file in the state directory, which every node sees.
func (a *agent) rayTokenPath() string {
	return filepath.Join(a.stateDir, RayTokenFile)
}

// trackChild mirrors a service's events into the metrics state.
func (a *agent) trackChild(e supervisor.Event) {
	a.state.SetChild(e.Service, e.State, time.Now())
	a.state.SetPID(e.Service, e.PID)
	if e.State == supervisor.StateBackoff {
		a.state.AddRestart(e.Service, e.Cause)
	}
}
