// Package layout decides how the job's models are laid over its nodes: each model's nodes, its
// tensor and pipeline parallelism (given, or planned from the model and the GPUs), and whether
// it runs as replicas. It decides; it starts nothing.
package layout

import (
	"fmt"
	"os"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/llm-agent/llm-agent/agent/bytesize"
	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/plan"
	"github.com/llm-agent/llm-agent/gpu"
	slurmscripts "github.com/llm-agent/llm-agent/slurm-scripts"
)

// Env is what planning reads of the world: the environment (HF_HOME, HOME) and, where no GPU
// memory is given, NVML.
type Env struct {
	Getenv func(string) string
	// NVML is nil where there is no GPU library: the memory must then be given.
	NVML nvml.Interface
	// GPUAccessible tells whether this process may use a GPU by minor number.
	GPUAccessible func(minor int) bool
}

// LoadPresets reads the presets file at path, or the shipped one when path is empty.
func LoadPresets(path string) (map[string]plan.Preset, error) {
	data := slurmscripts.PresetsYAML
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", plan.ErrPreset, err)
		}
		data = b
	}
	return plan.ParsePresets(data)
}

// PlanOptions are the inputs of `llm-agent plan` and of run's own planning.
type PlanOptions struct {
	Model        string
	Nodes        int
	GPUsPerNode  int
	GPUMemory    string
	MaxModelLen  int
	MemoryUtil   float64
	Dtype        string
	Quantization string
	KVCacheDtype string
	Tensor       int
	Pipeline     int
	// Visible and InJob pick the GPU whose memory NVML reports when GPUMemory is empty.
	Visible []string
	InJob   bool
}

// PlanFor loads the model and makes a plan; GPU memory comes from NVML when not given.
func PlanFor(o PlanOptions, env Env) (plan.Plan, error) {
	dir, err := plan.ResolveModel(o.Model, env.Getenv("HF_HOME"), env.Getenv("HOME"))
	if err != nil {
		return plan.Plan{}, err
	}
	m, err := plan.LoadModel(dir)
	if err != nil {
		return plan.Plan{}, err
	}
	var mem int64
	if o.GPUMemory != "" {
		if mem, err = bytesize.Parse(o.GPUMemory); err != nil {
			return plan.Plan{}, fmt.Errorf("%w: GPU memory: %w", plan.ErrRequest, err)
		}
	} else if env.NVML != nil {
		if mem, err = gpu.TotalMemory(env.NVML, o.Visible, o.InJob, env.GPUAccessible); err != nil {
			return plan.Plan{}, fmt.Errorf("%w: GPU memory unknown (%v); pass --gpu-memory such as 80GB", plan.ErrRequest, err)
		}
	}
	return plan.Make(m, plan.Request{
		Nodes: o.Nodes, GPUsPerNode: o.GPUsPerNode, GPUMemory: mem, MaxModelLen: o.MaxModelLen, MemoryUtil: o.MemoryUtil,
		Dtype: o.Dtype, Quantization: o.Quantization, KVCacheDtype: o.KVCacheDtype, Tensor: o.Tensor, Pipeline: o.Pipeline,
	})
}

// ReplicaPlan tells whether a planned model runs as replicas (plan.RunShape), and how, when the
// job's replica count (replicas: --replicas, or the models file's) and the pipeline were left
// to the plan.
func ReplicaPlan(cfg config.Config, replicas int, p *plan.Plan, nodes int) (plan.RunShape, bool) {
	if p == nil || nodes < 2 || p.Run.Replicas < 2 || replicas != 0 || cfg.PipelineParallel != 0 || !cfg.Gateway {
		return plan.RunShape{}, false
	}
	return p.Run, true
}
