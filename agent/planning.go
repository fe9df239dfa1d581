package agent

import (
	"errors"
	"fmt"
	"strings"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/layout"
	"github.com/llm-agent/llm-agent/agent/node"
	"github.com/llm-agent/llm-agent/agent/plan"
	"github.com/llm-agent/llm-agent/vllm"
)

// applyPreset puts the preset's vLLM options under the user's and warns when the allocation is
// not the one the preset is sized for.
func applyPreset(e *node.Env) error {
	if e.Cfg.Preset == "" {
		return nil
	}
	presets, err := layout.LoadPresets(e.Cfg.PresetsFile)
	if err != nil {
		return fmt.Errorf("%w: %w", config.ErrInvalid, err)
	}
	p, err := plan.Lookup(presets, e.Cfg.Preset)
	if err != nil {
		return fmt.Errorf("%w: %w", config.ErrInvalid, err)
	}
	e.Cfg.VLLMArgs = vllm.Merge(p.VLLM.Args(), e.Cfg.VLLMArgs)
	if p.Slurm.Nodes != len(e.Alloc.Nodes) || p.Slurm.GPUsPerNode != e.Alloc.GPUs {
		e.Log.Warn("the allocation differs from the preset's", "preset", p.Name,
			"preset_nodes", p.Slurm.Nodes, "preset_gpus_per_node", p.Slurm.GPUsPerNode,
			"nodes", len(e.Alloc.Nodes), "gpus_per_node", e.Alloc.GPUs)
	}
	e.Log.Info("preset applied", "preset", p.Name, "vllm_args", strings.Join(p.VLLM.Args(), " "))
	return nil
}

// chooseParallelism plans tensor and pipeline sizes from the model when the user left either
// open. A model that cannot fit ends the job here, before Ray starts. When the model or the GPU
// memory cannot be read, it falls back to GPUs per node × nodes and says so. A model that fits
// on one node of several, with --replicas and --pipeline-parallel-size left open, runs as one
// replica per node behind the gateway.
func chooseParallelism(e *node.Env) error {
	cfg := e.Cfg
	nodes := len(e.Alloc.Nodes)
	if e.Replicated() {
		gpus := e.Alloc.GPUs
		if n := e.Replicas.Count; n > nodes {
			k := n / nodes
			if n%nodes != 0 || (gpus > 0 && gpus%k != 0) {
				return fmt.Errorf("%w: --replicas %d on %d nodes of %d GPUs: give at most %d (one per node), or a multiple of %d whose replicas per node divide the node's GPUs (several per node, each on its own share)",
					ErrBadInput, n, nodes, gpus, nodes, nodes)
			}
			e.Replicas.PerNode, gpus = k, gpus/k
		}
		// Each replica is a one-node engine on its share of the node: plan it so.
		var err error
		if e.Par, _, err = planModel(e, cfg, 1, gpus); err != nil {
			return err
		}
		if !e.Alloc.IsHead() {
			return nil
		}
		e.Tensors = map[string]int{}
		for _, p := range e.Models {
			par, _, err := planModel(e, p.Config, 1, e.Alloc.GPUs)
			if err != nil {
				return fmt.Errorf("model %s: %w", p.Name, err)
			}
			e.Tensors[p.Name] = par.Tensor
		}
		return nil
	}
	par, p, err := planModel(e, cfg, nodes, e.Alloc.GPUs)
	if err != nil {
		return err
	}
	e.Par = par
	if run, ok := layout.ReplicaPlan(cfg, e.Replicas.Count, p, nodes); ok && e.Alloc.IsHead() {
		e.Replicas, e.Par = layout.Replicas{Count: run.Replicas, PerNode: run.PerNode}, layout.Parallelism{Tensor: run.Tensor, Pipeline: 1}
		e.Log.Info("the model fits on one node: replicas behind the gateway", "why", p.Run.Why)
	}
	return nil
}

// planModel plans one model over nodes of gpus GPUs each; the plan is nil where the sizes were
// given or could not be planned.
func planModel(e *node.Env, cfg config.Config, nodes, gpus int) (layout.Parallelism, *plan.Plan, error) {
	if nodes == 1 {
		cfg.PipelineParallel = 1
	}
	if (cfg.TensorParallel != 0 && cfg.PipelineParallel != 0) || gpus == 0 || !e.Alloc.IsHead() {
		par, err := layout.ChooseParallelism(cfg.TensorParallel, cfg.PipelineParallel, nodes, gpus)
		return par, nil, err
	}
	s := vllm.ReadSettings(cfg.VLLMArgs)
	p, planErr := layout.PlanFor(layout.PlanOptions{Model: cfg.Model, Nodes: nodes, GPUsPerNode: gpus, GPUMemory: cfg.GPUMemory,
		MaxModelLen: s.MaxModelLen, MemoryUtil: s.GPUMemoryUtilization, Dtype: s.Dtype, Quantization: s.Quantization, KVCacheDtype: s.KVCacheDtype,
		Tensor: cfg.TensorParallel, Pipeline: cfg.PipelineParallel, Visible: e.Alloc.GPUIDs, InJob: !e.Alloc.Local}, planEnv(e))
	switch {
	case planErr == nil:
		e.Log.Info("plan", "model", cfg.ServedName(), "summary", p.Summary())
		return layout.Parallelism{Tensor: p.Chosen.Tensor, Pipeline: p.Chosen.Pipeline}, &p, nil
	case errors.Is(planErr, plan.ErrDoesNotFit) && nodes == 1 && len(e.Alloc.Nodes) > 1:
		hint := "run one engine over the nodes (--replicas 1)"
		if e.MultiModel() {
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
	e.Log.Warn("no plan from the model; using GPUs per node × nodes", "model", cfg.ServedName(), "reason", planErr,
		"tensor_parallel", par.Tensor, "pipeline_parallel", par.Pipeline)
	return par, nil, nil
}

// planEnv is what the planning reads of this node's world.
func planEnv(e *node.Env) layout.Env {
	return layout.Env{Getenv: e.Getenv, NVML: e.NVML, GPUAccessible: e.GPUAccessible}
}
