package plan

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/llm-agent/llm-agent/slurm"
)

// SUEstimate is what a job of a given length costs.
type SUEstimate struct {
	Time       string  `json:"time"`
	Factor     float64 `json:"su_factor"`
	Allocation float64 `json:"allocation_sus"`
	PlanOnly   float64 `json:"plan_only_sus"`
}

// EstimateSUs prices the allocation and the plan's own GPUs for wall.
func (p Plan) EstimateSUs(wall time.Duration, factor float64) SUEstimate {
	return SUEstimate{
		Time:       wall.String(),
		Factor:     factor,
		Allocation: slurm.ServiceUnits(wall, p.Request.Nodes*p.Request.GPUsPerNode, factor),
		PlanOnly:   slurm.ServiceUnits(wall, p.Chosen.GPUs, factor),
	}
}

// Write prints the plan for people.
func (p Plan) Write(w io.Writer, su *SUEstimate) error {
	m, r := p.Model, p.Request
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	quant := ""
	if m.Quantization != "" {
		quant = fmt.Sprintf(", %s %d-bit", m.Quantization, m.QuantBits)
	} else if r.Quantization != "" {
		quant = ", quantized to " + r.Quantization + " when loaded"
	}
	fmt.Fprintf(tw, "model\t%s (%s, %s%s)\n", m.Path, m.Architecture, m.Dtype, quant)
	fmt.Fprintf(tw, "shape\t%d layers, %d attention heads, %d KV heads of size %d%s\n", m.Layers, m.Heads, m.KVHeads, m.HeadDim, experts(m))
	fmt.Fprintf(tw, "weights\t%s (from %s)\n", gb(p.WeightBytes), m.WeightSource)
	fmt.Fprintf(tw, "KV cache\t%s per token (2 × %d layers × %d KV heads × %d × %d bytes); %s per %d-token sequence\n",
		kib(p.KVBytesPerToken), m.Layers, m.KVHeads, m.HeadDim, kvBytes(m, r), gb(p.SequenceBytes), r.MaxModelLen)
	fmt.Fprintf(tw, "allocation\t%d node(s) × %d GPU(s) × %s, %.0f%% for vLLM, %s per GPU for the runtime\n",
		r.Nodes, r.GPUsPerNode, gb(r.GPUMemory), r.MemoryUtil*100, gb(RuntimeReserve))
	c := p.Chosen
	fmt.Fprintf(tw, "plan\ttensor parallel %d × pipeline parallel %d = %d GPU(s) on %d node(s)\n", c.Tensor, c.Pipeline, c.GPUs, c.Pipeline)
	fmt.Fprintf(tw, "\t%s of weights and %s of KV cache per GPU: %d concurrent sequence(s) of %d tokens\n",
		gb(c.WeightsPerGPU), gb(c.KVPerGPU), c.Sequences, r.MaxModelLen)
	fmt.Fprintf(tw, "replicas\t%d data-parallel replica(s) of this plan fit the allocation\n", p.Replicas)
	fmt.Fprintf(tw, "run as\t%s\n", p.Run.Why)
	for i, why := range p.Why {
		label := ""
		if i == 0 {
			label = "why"
		}
		fmt.Fprintf(tw, "%s\t%s\n", label, why)
	}
	if su != nil {
		fmt.Fprintf(tw, "service units\t%s × %d GPUs × %g = %.1f SU for the allocation (%.1f SU for the plan's %d GPUs alone)\n",
			su.Time, r.Nodes*r.GPUsPerNode, su.Factor, su.Allocation, su.PlanOnly, c.GPUs)
	}
	return tw.Flush()
}

func experts(m Model) string {
	if m.Experts > 0 {
		return fmt.Sprintf(", %d experts", m.Experts)
	}
	return ""
}
