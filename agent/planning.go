package agent

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/llm-agent/llm-agent/agent/bytesize"
	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/plan"
	"github.com/llm-agent/llm-agent/gpu"
	slurmscripts "github.com/llm-agent/llm-agent/slurm-scripts"
	"github.com/llm-agent/llm-agent/vllm"
)

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
func PlanFor(o PlanOptions, deps Deps) (plan.Plan, error) {
	dir, err := plan.ResolveModel(o.Model, deps.Getenv("HF_HOME"), deps.Getenv("HOME"))
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
	} else if deps.NVML != nil {
		if mem, err = gpu.TotalMemory(deps.NVML, o.Visible, o.InJob, deps.GPUAccessible); err != nil {
			return plan.Plan{}, fmt.Errorf("%w: GPU memory unknown (%v); pass --gpu-memory such as 80GB", plan.ErrRequest, err)
		}
	}
	return plan.Make(m, plan.Request{
		Nodes: o.Nodes, GPUsPerNode: o.GPUsPerNode, GPUMemory: mem, MaxModelLen: o.MaxModelLen, MemoryUtil: o.MemoryUtil,
		Dtype: o.Dtype, Quantization: o.Quantization, KVCacheDtype: o.KVCacheDtype, Tensor: o.Tensor, Pipeline: o.Pipeline,
	})
}

// applyPreset puts the preset's vLLM options under the user's and warns when the allocation is
// not the one the preset is sized for.
func (a *agent) applyPreset() error {
	if a.cfg.Preset == "" {
		return nil
	}
	presets, err := LoadPresets(a.cfg.PresetsFile)
	if err != nil {
		return fmt.Errorf("%w: %w", config.ErrInvalid, err)
	}
	p, err := plan.Lookup(presets, a.cfg.Preset)
	if err != nil {
		return fmt.Errorf("%w: %w", config.ErrInvalid, err)
	}
	a.cfg.VLLMArgs = vllm.Merge(p.VLLM.Args(), a.cfg.VLLMArgs)
	if p.Slurm.Nodes != len(a.alloc.Nodes) || p.Slurm.GPUsPerNode != a.alloc.GPUs {
		a.log.Warn("the allocation differs from the preset's", "preset", p.Name,
			"preset_nodes", p.Slurm.Nodes, "preset_gpus_per_node", p.Slurm.GPUsPerNode,
			"nodes", len(a.alloc.Nodes), "gpus_per_node", a.alloc.GPUs)
	}
	a.log.Info("preset applied", "preset", p.Name, "vllm_args", strings.Join(p.VLLM.Args(), " "))
	return nil
}

// chooseParallelism plans tensor and pipeline sizes from the model when the user left either
// open. A model that cannot fit ends the job here, before Ray starts. When the model or the GPU
// memory cannot be read, it falls back to GPUs per node × nodes and says so. A model that fits
// on one node of several, with --replicas and --pipeline-parallel-size left open, runs as one
// replica per node behind the gateway.
func (a *agent) chooseParallelism() error {
	cfg := a.cfg
	nodes := len(a.alloc.Nodes)
	if a.replicated() {
		gpus := a.alloc.GPUs
		if cfg.Replicas > nodes {
			k := cfg.Replicas / nodes
			if cfg.Replicas%nodes != 0 || (gpus > 0 && gpus%k != 0) {
				return fmt.Errorf("%w: --replicas %d on %d nodes of %d GPUs: give at most %d (one per node), or a multiple of %d whose replicas per node divide the node's GPUs (several per node, each on its own share)",
					ErrBadInput, cfg.Replicas, nodes, gpus, nodes, nodes)
			}
			a.slots, gpus = k, gpus/k
		}
		// Each replica is a one-node engine on its share of the node: plan it so.
		var err error
		if a.par, _, err = a.planModel(cfg, 1, gpus); err != nil {
			return err
		}
		if !a.alloc.IsHead() {
			return nil
		}
		a.tensors = map[string]int{}
		for _, p := range a.models {
			par, _, err := a.planModel(p.cfg, 1, a.alloc.GPUs)
			if err != nil {
				return fmt.Errorf("model %s: %w", p.Name, err)
			}
			a.tensors[p.Name] = par.Tensor
		}
		return nil
	}
	par, p, err := a.planModel(cfg, nodes, a.alloc.GPUs)
	if err != nil {
		return err
	}
	a.par = par
	if run, ok := replicaPlan(cfg, p, nodes); ok && a.alloc.IsHead() {
		a.cfg.Replicas, a.slots, a.par = run.Replicas, run.PerNode, Parallelism{Tensor: run.Tensor, Pipeline: 1}
		a.log.Info("the model fits on one node: replicas behind the gateway", "why", p.Run.Why)
	}
	return nil
}

// replicaPlan tells whether a planned model runs as replicas (plan.RunShape), and how, when the
// user left the count and the pipeline to the plan.
func replicaPlan(cfg config.Config, p *plan.Plan, nodes int) (plan.RunShape, bool) {
	if p == nil || nodes < 2 || p.Run.Replicas < 2 || cfg.Replicas != 0 || cfg.PipelineParallel != 0 || !cfg.Gateway {
		return plan.RunShape{}, false
	}
	return p.Run, true
}

// planModel plans one model over nodes of gpus GPUs each; the plan is nil where the sizes were
// given or could not be planned.
func (a *agent) planModel(cfg config.Config, nodes, gpus int) (Parallelism, *plan.Plan, error) {
	if nodes == 1 {
		cfg.PipelineParallel = 1
	}
	if (cfg.TensorParallel != 0 && cfg.PipelineParallel != 0) || gpus == 0 || !a.alloc.IsHead() {
		par, err := ChooseParallelism(cfg.TensorParallel, cfg.PipelineParallel, nodes, gpus)
		return par, nil, err
	}
	s := vllm.ReadSettings(cfg.VLLMArgs)
	p, planErr := PlanFor(PlanOptions{Model: cfg.Model, Nodes: nodes, GPUsPerNode: gpus, GPUMemory: cfg.GPUMemory,
		MaxModelLen: s.MaxModelLen, MemoryUtil: s.GPUMemoryUtilization, Dtype: s.Dtype, Quantization: s.Quantization, KVCacheDtype: s.KVCacheDtype,
		Tensor: cfg.TensorParallel, Pipeline: cfg.PipelineParallel, Visible: a.alloc.GPUIDs, InJob: !a.alloc.Local}, a.deps)
	switch {
	case planErr == nil:
		a.log.Info("plan", "model", cfg.ServedName(), "summary", p.Summary())
		return Parallelism{Tensor: p.Chosen.Tensor, Pipeline: p.Chosen.Pipeline}, &p, nil
	case errors.Is(planErr, plan.ErrDoesNotFit) && nodes == 1 && len(a.alloc.Nodes) > 1:
		hint := "run one engine over the nodes (--replicas 1)"
		if a.multiModel() {
			hint = "serve this model from a job of its own, one engine over its nodes"
		}
		return Parallelism{}, nil, fmt.Errorf("%w: %w; a replica runs on one node, and replicas whose model spans nodes are not supported: %s", ErrBadInput, planErr, hint)
	case errors.Is(planErr, plan.ErrDoesNotFit):
		return Parallelism{}, nil, fmt.Errorf("%w: %w", ErrBadInput, planErr)
	}
	par, err := ChooseParallelism(cfg.TensorParallel, cfg.PipelineParallel, nodes, gpus)
	if err != nil {
		return par, nil, err
	}
	a.log.Warn("no plan from the model; using GPUs per node × nodes", "model", cfg.ServedName(), "reason", planErr,
		"tensor_parallel", par.Tensor, "pipeline_parallel", par.Pipeline)
	return par, nil, nil
}
