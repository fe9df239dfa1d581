package node

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/llm-agent/llm-agent/agent/internal/linelog"
	"github.com/llm-agent/llm-agent/agent/secrets"
	"github.com/llm-agent/llm-agent/agent/securefs"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/ray"
	"github.com/llm-agent/llm-agent/supervisor"
)

// What every child process of a node shares: its log file, its restart policy and service
// options, its metrics; and the node's `ray start`.

// StopSettle is how long a child's end that may be part of a stop waits for the stop to reach
// this agent (or, for rank 0, a worker's node file): Slurm signals every process of the step on
// every node at once, the children as well as the agents.
const StopSettle = 2 * time.Second

// ChildOutput returns a writer that sends a child's output to its log file in the state
// directory and, line by line, to the agent's log.
func (e *Env) ChildOutput(name string) (*linelog.Logger, func(), error) {
	path := filepath.Join(e.StateDir, "logs", e.Alloc.Hostname()+"."+name+".log")
	f, err := securefs.OpenAppend(path)
	if err != nil {
		return nil, nil, fmt.Errorf("open log of %s: %w", name, err)
	}
	w := linelog.New(f, e.Log.Named(name))
	return w, func() { w.Flush(); f.Close() }, nil
}

// Policy returns a fresh restart policy from the configuration.
func (e *Env) Policy() supervisor.Policy {
	p := supervisor.DefaultPolicy()
	p.Initial = e.Cfg.BackoffInitial
	p.Max = e.Cfg.BackoffMax
	p.StableAfter = e.Cfg.StableAfter
	p.MaxRestarts = e.Cfg.MaxRestarts
	p.Window = e.Cfg.RestartWindow
	return p
}

// ServiceOptions are what every supervised child of the agent shares: the restart policy from
// the configuration, the log, the clock, and the run's stop, which a child's end during it is
// not restarted for. Slurm signals every process of the step at once: a child that ends as a
// stop would may end before this agent has taken the same signal in, so such an end waits up to
// StopSettle for the stop to show.
func (e *Env) ServiceOptions(name string) supervisor.ServiceOptions {
	return supervisor.ServiceOptions{Name: name, Policy: e.Policy(), Logger: e.Log.Named("supervisor").With("proc", name),
		Clock: e.Clock, Stopping: e.Stopping, StopSettle: StopSettle}
}

// TrackChild mirrors a service's events into the metrics state.
func (e *Env) TrackChild(ev supervisor.Event) {
	e.State.SetChild(ev.Service, ev.State, time.Now())
	e.State.SetPID(ev.Service, ev.PID)
	if ev.State == supervisor.StateBackoff {
		e.State.AddRestart(ev.Service, ev.Cause)
	}
}

// RayTokenPath is the job's Ray token file in the state directory, which every node sees.
func (e *Env) RayTokenPath() string {
	return filepath.Join(e.StateDir, secrets.RayTokenFile)
}

// RayService returns the supervised `ray start` of this node, on the job's ports, joining gcs
// (empty on the head), with extraEnv added to the node's environment.
func (e *Env) RayService(ports jobfiles.Ports, gcs string, extraEnv []string, onEvent func(supervisor.Event)) (*supervisor.Service, func(), error) {
	out, closeOut, err := e.ChildOutput("ray")
	if err != nil {
		return nil, nil, err
	}
	env := append(e.Environ(), ray.Env(e.Addr, e.Ifname)...)
	env = ray.WithAuth(append(env, extraEnv...), e.RayTokenPath())
	opts := e.rayStartOptions(ports, gcs)
	svcOpts := e.ServiceOptions("ray")
	svcOpts.Command = func() (supervisor.Options, error) {
		return supervisor.Options{Name: "ray", Path: e.RayBin, Args: ray.StartArgs(opts), Env: env,
			Stdout: out, Stderr: out, Grace: e.Cfg.Grace / 5, Reaper: e.Reaper}, nil
	}
	svcOpts.OnEvent = onEvent
	return supervisor.NewService(svcOpts), closeOut, nil
}

// rayStartOptions returns this node's `ray start` settings for ports.
func (e *Env) rayStartOptions(ports jobfiles.Ports, gcs string) ray.StartOptions {
	return ray.StartOptions{
		Head:                e.Alloc.IsHead(),
		NodeAddress:         e.Addr,
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
		NumGPUs:             e.Alloc.GPUs,
		NumCPUs:             e.Alloc.CPUs,
		TempDir:             filepath.Join(e.LocalDir, "ray"), // inside the private node-local directory
		IncludeDashboard:    true,
	}
}
