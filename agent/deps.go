package agent

import (
	"context"
	"io"
	"os"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llm-agent/llm-agent/agent/node"
	"github.com/llm-agent/llm-agent/agent/service"
	"github.com/llm-agent/llm-agent/clock"
	"github.com/llm-agent/llm-agent/gpu"
	"github.com/llm-agent/llm-agent/slurm"
)

// Deps are the agent's links to the world outside its configuration; tests replace them.
type Deps struct {
	Logger   hclog.Logger
	Getenv   func(string) string
	Hostname string
	Net      node.Netinfo
	Ports    node.PortProber
	// Notice receives the one-line notices meant for the job's output.
	Notice io.Writer
	// Collectors are registered beside the agent's own (the GPU collector, for one).
	Collectors []prometheus.Collector
	// Reaper is the binary that runs supervisor.MaybeRunReaper; empty means this executable.
	Reaper string
	// JobEndTime asks Slurm for the job's end time when SLURM_JOB_END_TIME is unset; nil skips.
	JobEndTime func(ctx context.Context, jobID string) (time.Time, error)
	// NVML is the GPU library for the GPU collector; nil turns GPU metrics off.
	NVML nvml.Interface
	// GPUAccessible tells whether this process may use a GPU by minor number (gpu.DeviceAccessible).
	GPUAccessible func(minor int) bool
	// Clock times every wait and loop of the run; nil means the wall clock.
	Clock clock.Clock
	// Scheduler queues a service's successor (slurm.Commands); Args are the agent's own
	// options, which the successor's batch script gets again.
	Scheduler service.Scheduler
	Args      []string
	// ServiceTimings are a service's polls and handover waits; zero fields are the defaults
	// (tests shorten them).
	ServiceTimings service.Timings
}

// DefaultDeps returns the real environment.
func DefaultDeps(log hclog.Logger) Deps {
	host, _ := os.Hostname()
	return Deps{Logger: log, Getenv: os.Getenv, Hostname: host, Net: node.SystemNet{}, Ports: node.TCPProber{}, Notice: os.Stderr,
		JobEndTime: slurm.SqueueEndTime, NVML: nvml.New(), GPUAccessible: gpu.DeviceAccessible,
		Scheduler: slurm.Commands{}, Args: runArgs(os.Args)}
}

// runArgs are the options of `llm-agent run` in the agent's command line.
func runArgs(args []string) []string {
	for i, a := range args {
		if a == "run" {
			return args[i+1:]
		}
	}
	return nil
}
