package agent

import (
	"errors"
	"fmt"
	"strings"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/layout"
	"github.com/llm-agent/llm-agent/agent/plan"
	"github.com/llm-agent/llm-agent/vllm"
)

// applyPreset puts the preset's vLLM options under the user's and warns when the allocation is
// not the one the preset is sized for.
func (a *agent) applyPreset() error {
	if a.cfg.Preset == "" {
		return nil
	}
	presets, err := layout.LoadPresets(a.cfg.PresetsFile)
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
		if n := a.replicas.Count; n > nodes {
			k := n / nodes
			if n%nodes != 0 || (gpus > 0 && gpus%k != 0) {
				return fmt.Errorf("%w: --replicas %d on %d nodes of %d GPUs: give at most %d (one per node), or a multiple of %d whose replicas per node divide the node's GPUs (several per node, each on its own share)",
					ErrBadInput, n, nodes, gpus, nodes, nodes)
			}
			a.replicas.PerNode, gpus = k, gpus/k
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
			par, _, err := a.planModel(p.Config, 1, a.alloc.GPUs)
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
	if run, ok := layout.ReplicaPlan(cfg, a.replicas.Count, p, nodes); ok && a.alloc.IsHead() {
		a.replicas, a.par = layout.Replicas{Count: run.Replicas, PerNode: run.PerNode}, layout.Parallelism{Tensor: run.Tensor, Pipeline: 1}
		a.log.Info("the model fits on one node: replicas behind the gateway", "why", p.Run.Why)
	}
	return nil
}

// planModel plans one model over nodes of gpus GPUs each; the plan is nil where the sizes were
// given or could not be planned.
func (a *agent) planModel(cfg config.Config, nodes, gpus int) (layout.Parallelism, *plan.Plan, error) {
	if nodes == 1 {
		cfg.PipelineParallel = 1
	}
	if (cfg.TensorParallel != 0 && cfg.PipelineParallel != 0) || gpus == 0 || !a.alloc.IsHead() {
		par, err := layout.ChooseParallelism(cfg.TensorParallel, cfg.PipelineParallel, nodes, gpus)
		return par, nil, err
	}
	s := vllm.ReadSettings(cfg.VLLMArgs)
	p, planErr := layout.PlanFor(layout.PlanOptions{Model: cfg.Model, Nodes: nodes, GPUsPerNode: gpus, GPUMemory: cfg.GPUMemory,
		MaxModelLen: s.MaxModelLen, MemoryUtil: s.GPUMemoryUtilization, Dtype: s.Dtype, Quantization: s.Quantization, KVCacheDtype: s.KVCacheDtype,
		Tensor: cfg.TensorParallel, Pipeline: cfg.PipelineParallel, Visible: a.alloc.GPUIDs, InJob: !a.alloc.Local}, a.planEnv())
	switch {
	case planErr == nil:
		a.log.Info("plan", "model", cfg.ServedName(), "summary", p.Summary())
		return layout.Parallelism{Tensor: p.Chosen.Tensor, Pipeline: p.Chosen.Pipeline}, &p, nil
	case errors.Is(planErr, plan.ErrDoesNotFit) && nodes == 1 && len(a.alloc.Nodes) > 1:
		hint := "run one engine over the nodes (--replicas 1)"
		if a.multiModel() {
			hint = "serve this model from a job of its own, one engine over its nodes"
		}
		return layout.Parallelism{}, nil, fmt.Errorf("%w: %w; a replica runs on one node, and replicas whose model spans nodes are not supported: %s", ErrBadInput, planErr, hint)
	case errors.Is(planErr, plan.ErrDoesNotFit):
		return layout.Parallelism{}, nil, fmt.Errorf("%w: %w", ErrBadInput, planErr)
	}
	par, err := layout.ChooseParallelism(cfg.TensorParallel, cfg.PipelineParallel, nodes, gpus)
	if err != nil {
		return par, nil, err
	}
	a.log.Warn("no plan from the model; using GPUs per node × nodes", "model", cfg.ServedName(), "reason", planErr,
		"tensor_parallel", par.Tensor, "pipeline_parallel", par.Pipeline)
	return par, nil, nil
}

// planEnv is what the planning reads of this node's world.
func (a *agent) planEnv() layout.Env {
	return layout.Env{Getenv: a.deps.Getenv, NVML: a.deps.NVML, GPUAccessible: a.deps.GPUAccessible}
}
