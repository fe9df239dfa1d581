//go:build cgo

package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/hashicorp/go-hclog"
	"github.com/urfave/cli/v2"

	"github.com/llm-agent/llm-agent/agent"
	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/layout"
	"github.com/llm-agent/llm-agent/agent/plan"
	"github.com/llm-agent/llm-agent/slurm"
)

func planCommand() *cli.Command {
	return &cli.Command{
		Name:         "plan",
		OnUsageError: onUsageError,
		Usage:        "work out tensor and pipeline parallelism, KV cache and service units from a model's files and an allocation",
		UsageText:    "llm-agent plan --model DIR|HF_ID [--nodes N] [--gpus-per-node G] [--gpu-memory 80GB] [--max-model-len L] [--time 4h] [--json]",
		Description: "Reads config.json and the safetensors index or headers (never the tensors), then picks the fewest GPUs that hold " +
			"the weights plus one full sequence: tensor parallel within a node, pipeline parallel across nodes, fewer nodes first. " +
			"Inside a Slurm job the allocation and the GPU memory are read from the job and NVML.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "model", Usage: "model directory or Hugging Face id in the cache ($HF_HOME) (required)"},
			&cli.IntFlag{Name: "nodes", Usage: "nodes (default: $SLURM_JOB_NUM_NODES or 1)"},
			&cli.IntFlag{Name: "gpus-per-node", Usage: "GPUs per node (default: $SLURM_GPUS_ON_NODE)"},
			&cli.StringFlag{Name: "gpu-memory", Usage: "memory of one GPU, such as 80GB or 81559MiB (default: read through NVML)"},
			&cli.IntFlag{Name: "max-model-len", Usage: "longest sequence in tokens (default: the model's max_position_embeddings)"},
			&cli.Float64Flag{Name: "gpu-memory-utilization", Value: 0.9, Usage: "fraction of GPU memory vLLM may use"},
			&cli.StringFlag{Name: "dtype", Usage: "load the weights in this dtype: float16, bfloat16, float32"},
			&cli.StringFlag{Name: "quantization", Usage: "quantize an unquantized checkpoint when loading: fp8, int8, int4"},
			&cli.StringFlag{Name: "kv-cache-dtype", Usage: "fp8 for an 8-bit KV cache"},
			&cli.IntFlag{Name: "tensor-parallel-size", Usage: "fix tensor parallel instead of choosing it"},
			&cli.IntFlag{Name: "pipeline-parallel-size", Usage: "fix pipeline parallel instead of choosing it"},
			&cli.StringFlag{Name: "preset", Usage: "take max model length, memory utilization and the allocation from a preset"},
			&cli.StringFlag{Name: "presets-file", Usage: "presets file instead of the shipped one"},
			&cli.StringFlag{Name: "time", Usage: "job length for the service-unit estimate, as sbatch --time takes it (240, 04:00:00, 1-00:00:00) or 4h"},
			&cli.Float64Flag{Name: "su-factor", Value: config.Default().SUFactor, Usage: "service units per GPU-hour"},
			&cli.StringFlag{Name: "launcher", Value: config.LauncherRay, Usage: "how the engine would span nodes: ray or mp (the plan is the same; it says which)"},
			&cli.BoolFlag{Name: "json", Usage: "print JSON"},
		},
		Action: planAction,
	}
}

func planAction(c *cli.Context) error {
	if c.String("model") == "" {
		return usageErrorf("--model is required")
	}
	if l := c.String("launcher"); l != config.LauncherRay && l != config.LauncherMP {
		return usageErrorf("--launcher %q: choose ray or mp", l)
	}
	job, err := slurm.ShapeFromEnv(os.Getenv)
	if err != nil {
		return usageError{err}
	}
	o := layout.PlanOptions{
		Model: c.String("model"), Nodes: c.Int("nodes"), GPUsPerNode: c.Int("gpus-per-node"), GPUMemory: c.String("gpu-memory"),
		MaxModelLen: c.Int("max-model-len"), MemoryUtil: c.Float64("gpu-memory-utilization"), Dtype: c.String("dtype"),
		Quantization: c.String("quantization"), KVCacheDtype: c.String("kv-cache-dtype"),
		Tensor: c.Int("tensor-parallel-size"), Pipeline: c.Int("pipeline-parallel-size"),
		InJob: job.InJob, Visible: job.GPUIDs,
	}
	if err := applyPlanPreset(c, &o); err != nil {
		return err
	}
	if o.Nodes == 0 {
		o.Nodes = max(job.Nodes, 1)
	}
	if o.GPUsPerNode == 0 {
		o.GPUsPerNode = job.GPUsPerNode
	}
	if o.GPUsPerNode == 0 {
		return usageErrorf("--gpus-per-node is required outside a Slurm job with GPUs")
	}
	deps := agent.DefaultDeps(hclog.NewNullLogger())
	p, err := layout.PlanFor(o, layout.Env{Getenv: deps.Getenv, NVML: deps.NVML, GPUAccessible: deps.GPUAccessible})
	if err != nil {
		return usageError{err}
	}
	return writePlan(c, p)
}

// writePlan prints the plan, with its service units when a time limit is given.
func writePlan(c *cli.Context, p plan.Plan) error {
	var su *plan.SUEstimate
	if t := c.String("time"); t != "" {
		wall, err := slurm.ParseTimeLimit(t)
		if err != nil {
			return usageError{err}
		}
		e := p.EstimateSUs(wall, c.Float64("su-factor"))
		su = &e
	}
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			plan.Plan
			ServiceUnits *plan.SUEstimate `json:"service_units,omitempty"`
			Summary      string           `json:"summary"`
			Launcher     string           `json:"launcher"`
		}{p, su, p.Summary(), c.String("launcher")})
	}
	if err := p.Write(c.App.Writer, su); err != nil {
		return err
	}
	_, err := fmt.Fprintln(c.App.Writer, launcherLine(c.String("launcher"), p.Chosen.Pipeline))
	return err
}

// launcherLine says how the plan's pipeline would run across the nodes.
func launcherLine(launcher string, pipeline int) string {
	switch {
	case pipeline <= 1:
		return "launcher: " + launcher + " (the engine stays on the head: no rank runs elsewhere)"
	case launcher == config.LauncherMP:
		return fmt.Sprintf("launcher: mp: vLLM's own multi-node mode, one rank on each of %d nodes, no Ray", pipeline)
	default:
		return fmt.Sprintf("launcher: ray: a Ray cluster over the job's nodes, the pipeline's %d stages on %d of them", pipeline, pipeline)
	}
}

// applyPlanPreset fills the options the user left open from --preset, if one is named.
func applyPlanPreset(c *cli.Context, o *layout.PlanOptions) error {
	name := c.String("preset")
	if name == "" {
		return nil
	}
	presets, err := layout.LoadPresets(c.String("presets-file"))
	if err != nil {
		return usageError{err}
	}
	p, err := plan.Lookup(presets, name)
	if err != nil {
		return usageError{err}
	}
	fill := func(dst *int, v int) {
		if *dst == 0 {
			*dst = v
		}
	}
	fill(&o.Nodes, p.Slurm.Nodes)
	fill(&o.GPUsPerNode, p.Slurm.GPUsPerNode)
	fill(&o.MaxModelLen, p.VLLM.MaxModelLen)
	if !c.IsSet("gpu-memory-utilization") && p.VLLM.GPUMemoryUtilization > 0 {
		o.MemoryUtil = p.VLLM.GPUMemoryUtilization
	}
	if o.GPUMemory == "" && p.Slurm.GPUMemoryGB > 0 {
		o.GPUMemory = strconv.FormatFloat(p.Slurm.GPUMemoryGB, 'f', -1, 64) + "GB"
	}
	if o.Quantization == "" {
		o.Quantization = p.VLLM.Quantization
	}
	if o.KVCacheDtype == "" {
		o.KVCacheDtype = p.VLLM.KVCacheDtype
	}
	if !c.IsSet("time") && p.Slurm.Time != "" {
		c.Set("time", p.Slurm.Time)
	}
	return nil
}

func presetsCommand() *cli.Command {
	return &cli.Command{
		Name:         "presets",
		OnUsageError: onUsageError,
		Usage:        "list the presets that run --preset takes, with their vLLM options and the Slurm resources they assume",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "presets-file", Usage: "presets file instead of the shipped one"},
		},
		Action: func(c *cli.Context) error {
			presets, err := layout.LoadPresets(c.String("presets-file"))
			if err != nil {
				return usageError{err}
			}
			tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PRESET\tSLURM\tVLLM OPTIONS\tFOR")
			for _, name := range plan.Names(presets) {
				p := presets[name]
				s := p.Slurm
				fmt.Fprintf(tw, "%s\t%d node(s) × %d GPU(s) × %gGB, %d CPUs, %s\t%s\t%s\n", name, s.Nodes, s.GPUsPerNode,
					s.GPUMemoryGB, s.CPUsPerTask, s.Time, strings.Join(p.VLLM.Args(), " "), p.Description)
			}
			return tw.Flush()
		},
	}
}
