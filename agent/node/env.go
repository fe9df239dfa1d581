package node

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/layout"
	"github.com/llm-agent/llm-agent/agent/lora"
	"github.com/llm-agent/llm-agent/agent/metrics"
	"github.com/llm-agent/llm-agent/clock"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/model"
	"github.com/llm-agent/llm-agent/slurm"
	"github.com/llm-agent/llm-agent/vllm"
)

// Env is one node's part of the job once its input was checked. The agent's facade makes it
// before any process starts and the rooms only read it, except for the run state that says
// who sets it: Replicas (a worker, from the head's rendezvous, before its stages) and the
// staged copy (SetStaged, before the engine starts).
type Env struct {
	// Cfg is the checked configuration of the model this node serves.
	Cfg config.Config
	Log hclog.Logger
	// Clock times every wait and loop of the run.
	Clock  clock.Clock
	Getenv func(string) string
	// Ports probes the ports the node's parts bind.
	Ports PortProber
	// Reaper is the binary that runs supervisor.MaybeRunReaper; empty means this executable.
	Reaper string
	// NVML is the GPU library for the GPU collector; nil turns GPU metrics off.
	NVML nvml.Interface
	// GPUAccessible tells whether this process may use a GPU by minor number.
	GPUAccessible func(minor int) bool
	// Collectors are registered beside the agent's own on the metrics port.
	Collectors []prometheus.Collector

	Alloc slurm.Allocation
	Par   layout.Parallelism
	// StateDir is the job's directory on the shared filesystem; LocalDir this node's private
	// temporary directory, removed when the agent ends.
	StateDir, LocalDir string
	// Stopping tells whether the run was asked to stop: a child that ends then is not restarted.
	Stopping func() bool
	// Addr is the node's address for the job's traffic, on interface Ifname.
	Addr, Ifname    string
	VLLMBin, RayBin string
	Started         time.Time
	// State is the node's state as its metrics show it.
	State *metrics.State
	// LoRA is this node's model's LoRA plan; LoRAJob that of the job's model that serves
	// adapters: LoRA where this node's does, on the head that of another node's model otherwise.
	LoRA, LoRAJob *lora.Plan
	// Models are where each model runs, in a job that serves several (or one from a models
	// file); empty for one model given by the options.
	Models []layout.ModelPlace
	// Tensors are each model's GPUs per replica, as the head planned them.
	Tensors map[string]int
	// Replicas is the job's replica layout: the user's --replicas, the models file's total, the
	// plan's, or the head's rendezvous on a worker. The configuration keeps what was asked.
	Replicas layout.Replicas
	// Offline is set when the model resolves to a local directory: the engine then runs with
	// the Hugging Face hub's offline mode on.
	Offline bool
	// File writes this node's file in the state directory, the one writer of it.
	File *jobfiles.NodeFile

	staged *model.Staged
}

// MultiNode tells whether the job spans several nodes.
func (e *Env) MultiNode() bool { return len(e.Alloc.Nodes) > 1 }

// UsesRay tells whether the job runs a Ray cluster: over several nodes, unless the launcher is
// vLLM's own multi-node mode.
func (e *Env) UsesRay() bool {
	return e.MultiNode() && e.Cfg.Launcher == config.LauncherRay && !e.Replicated()
}

// RanksOnNodes tells whether every node runs a rank of the engine (--launcher mp on several
// nodes).
func (e *Env) RanksOnNodes() bool {
	return e.MultiNode() && e.Cfg.Launcher == config.LauncherMP && !e.Replicated()
}

// Replicated tells whether the job runs several replicas of the engine.
func (e *Env) Replicated() bool { return e.Replicas.Count > 1 }

// PerNode is how many replicas each node runs: more than one when --replicas exceeds the
// nodes, each on its own share of the node's GPUs.
func (e *Env) PerNode() int { return max(1, e.Replicas.PerNode) }

// ReplicaName names a replica in the gateway's header, metrics and the connection file: its
// node, and its slot on the node when nodes run several.
func (e *Env) ReplicaName(host string, slot int) string {
	if e.PerNode() == 1 {
		return host
	}
	return host + "/" + strconv.Itoa(slot)
}

// SlotGPUs returns the GPUs of the replica in slot, a share of the node's visible ones, when
// the node runs several; nil leaves the engine the node's whole view.
func (e *Env) SlotGPUs(slot int) []string {
	k, ids := e.PerNode(), e.Alloc.GPUIDs
	if k == 1 || len(ids) < k || len(ids)%k != 0 {
		return nil
	}
	per := len(ids) / k
	return ids[slot*per : (slot+1)*per]
}

// SocketPath is the engine socket of a slot, in the node's private directory.
func (e *Env) SocketPath(slot int) string {
	if slot == 0 {
		return filepath.Join(e.LocalDir, vllm.SocketName)
	}
	return filepath.Join(e.LocalDir, "engine-"+strconv.Itoa(slot)+".sock")
}

// ChildName names the engine of a slot among the node's children (logs, metrics).
func ChildName(slot int) string {
	if slot == 0 {
		return "vllm"
	}
	return "vllm-" + strconv.Itoa(slot)
}

// MultiModel tells whether the job serves several models.
func (e *Env) MultiModel() bool { return len(e.Models) > 1 }

// ModelOf returns the served name and LoRA use of the model a node serves.
func (e *Env) ModelOf(host string) (string, bool) {
	for _, p := range e.Models {
		for _, n := range p.Nodes {
			if n == host {
				return p.Name, p.LoRA
			}
		}
	}
	return e.Cfg.ServedName(), e.LoRA.On()
}

// PriorityScheduling tells whether every engine of the job schedules by priority, so that the
// gateway may add each key's priority to its requests.
func (e *Env) PriorityScheduling() bool {
	if len(e.Models) == 0 {
		return vllm.ReadSettings(e.Cfg.VLLMArgs).SchedulingPolicy == "priority"
	}
	for _, p := range e.Models {
		if vllm.ReadSettings(p.Config.VLLMArgs).SchedulingPolicy != "priority" {
			return false
		}
	}
	return true
}

// SetStaged records this node's copy of its model under --stage-dir, which the engine loads
// from then on; it is set before the engine starts.
func (e *Env) SetStaged(s *model.Staged) { e.staged = s }

// Staged is this node's copy of its model, once made; nil without one.
func (e *Env) Staged() *model.Staged { return e.staged }

// EngineModel is what the engine loads: the staged copy once made (under the model's own
// served name, which the configuration keeps), else the model the configuration names.
func (e *Env) EngineModel() string {
	if e.staged != nil {
		return e.staged.Dir
	}
	return e.Cfg.Model
}

// Environ is the environment of the agent's children: its own, and the hub's offline mode
// when the model resolved to a local directory, unless the user set it.
func (e *Env) Environ() []string {
	env := os.Environ()
	if e.Offline && e.Getenv("HF_HUB_OFFLINE") == "" {
		env = append(env, "HF_HUB_OFFLINE=1")
	}
	return env
}

// RendezvousID is this launch's identity in the rendezvous: a worker takes only the one its own
// head published for this very launch of the job.
func (e *Env) RendezvousID() jobfiles.Rendezvous {
	return jobfiles.Rendezvous{JobID: e.Alloc.JobID, RestartCount: e.Alloc.RestartCount, StepID: e.Alloc.StepID,
		LaunchID: e.Alloc.LaunchID, HeadHost: e.Alloc.Head()}
}

// FindExecutables finds ray, where the job runs a Ray cluster, and vllm on every node that
// runs an engine or a rank of it. A worker looks again once the head's rendezvous told it the
// replicas.
func (e *Env) FindExecutables() error {
	var err error
	if e.UsesRay() {
		if e.RayBin, err = exec.LookPath(e.Cfg.RayBin); err != nil {
			return fmt.Errorf("%w: ray executable %q not found: run slurm-scripts/setup_environment.sh and activate its environment, or pass --ray-bin", config.ErrBadInput, e.Cfg.RayBin)
		}
	}
	if e.Alloc.IsHead() || e.RanksOnNodes() || e.Replicated() {
		if e.VLLMBin, err = exec.LookPath(e.Cfg.VLLMBin); err != nil {
			return fmt.Errorf("%w: vllm executable %q not found: install vLLM into the job's environment (slurm-scripts/setup_environment.sh), or pass --vllm-bin", config.ErrBadInput, e.Cfg.VLLMBin)
		}
	}
	return nil
}
