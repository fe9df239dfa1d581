package plan

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
)

// ErrDoesNotFit is returned when no tensor and pipeline split holds the model.
var ErrDoesNotFit = errors.New("model does not fit the allocation")

// ErrRequest is wrapped by errors about the planner's inputs.
var ErrRequest = errors.New("invalid plan request")

// RuntimeReserve is the memory per GPU that vLLM needs besides weights and KV cache: activations
// at peak batch, CUDA graphs and NCCL buffers. vLLM measures the real figure when it starts;
// this is the planner's estimate.
const RuntimeReserve int64 = 2e9

// Request is the allocation and serving settings a plan is made for.
type Request struct {
	Nodes       int     `json:"nodes"`
	GPUsPerNode int     `json:"gpus_per_node"`
	GPUMemory   int64   `json:"gpu_memory_bytes"`
	MaxModelLen int     `json:"max_model_len"`
	MemoryUtil  float64 `json:"gpu_memory_utilization"`
	// Dtype overrides the checkpoint's 16-bit dtype ("float16", "bfloat16", "float32"); ""
	// keeps it.
	Dtype string `json:"dtype,omitempty"`
	// Quantization asks for weights quantized when loaded ("fp8", "int8", "int4", "awq",
	// "gptq"); ignored for a checkpoint that is quantized already.
	Quantization string `json:"quantization,omitempty"`
	// KVCacheDtype is "fp8" for an 8-bit KV cache; "" or "auto" keeps the model's dtype.
	KVCacheDtype string `json:"kv_cache_dtype,omitempty"`
	// Tensor and Pipeline, when non-zero, are fixed instead of chosen.
	Tensor   int `json:"tensor_parallel_size,omitempty"`
	Pipeline int `json:"pipeline_parallel_size,omitempty"`
}

// Option is one tensor × pipeline split the planner weighed.
type Option struct {
	Tensor        int    `json:"tensor_parallel_size"`
	Pipeline      int    `json:"pipeline_parallel_size"`
	GPUs          int    `json:"gpus"`
	Fits          bool   `json:"fits"`
	WeightsPerGPU int64  `json:"weights_per_gpu_bytes,omitempty"`
	KVPerGPU      int64  `json:"kv_cache_per_gpu_bytes,omitempty"`
	Sequences     int    `json:"sequences,omitempty"`
	Reason        string `json:"reason"`
}

// Plan is the planner's answer.
type Plan struct {
	Model           Model   `json:"model"`
	Request         Request `json:"request"`
	WeightBytes     int64   `json:"weight_bytes"`
	KVBytesPerToken int64   `json:"kv_cache_bytes_per_token"`
	SequenceBytes   int64   `json:"bytes_per_full_sequence"`
	Chosen          Option  `json:"chosen"`
	Replicas        int     `json:"data_parallel_replicas"`
	// Run is how llm-agent run serves the model on this allocation when neither --replicas
	// nor --pipeline-parallel-size is given.
	Run        RunShape `json:"run"`
	Considered []Option `json:"considered"`
	Why        []string `json:"why"`
}

// Make chooses the smallest footprint of GPUs (tensor parallel within a node, pipeline parallel
// across nodes) that holds the weights plus at least one sequence of MaxModelLen tokens; on a tie
// it prefers fewer nodes.
func Make(m Model, r Request) (Plan, error) {
	if err := r.check(); err != nil {
		return Plan{}, err
	}
	if r.GPUMemory <= 0 {
		return Plan{}, fmt.Errorf("%w: GPU memory unknown; pass --gpu-memory (such as 80GB)", ErrRequest)
	}
	if r.MemoryUtil == 0 {
		r.MemoryUtil = 0.9
	}
	if r.MemoryUtil <= 0 || r.MemoryUtil > 1 {
		return Plan{}, fmt.Errorf("%w: GPU memory utilization %.2f is not in (0, 1]", ErrRequest, r.MemoryUtil)
	}
	if r.MaxModelLen == 0 {
		r.MaxModelLen = m.MaxPosition
	}
	if r.MaxModelLen <= 0 {
		return Plan{}, fmt.Errorf("%w: config.json has no max_position_embeddings; pass --max-model-len", ErrRequest)
	}
	p := Plan{Model: m, Request: r, WeightBytes: m.WeightsFor(r.Quantization, r.Dtype)}
	kvElem := kvBytes(m, r)
	p.KVBytesPerToken = int64(2 * m.Layers * m.KVHeads * m.HeadDim * kvElem)
	p.SequenceBytes = p.KVBytesPerToken * int64(r.MaxModelLen)

	var best *Option
	for pp := 1; pp <= r.Nodes; pp++ {
		for tp := 1; tp <= r.GPUsPerNode; tp++ {
			if r.Tensor != 0 && tp != r.Tensor || r.Pipeline != 0 && pp != r.Pipeline {
				continue
			}
			o := p.weigh(tp, pp, kvElem)
			p.Considered = append(p.Considered, o)
			if o.Fits && (best == nil || o.GPUs < best.GPUs || o.GPUs == best.GPUs && o.Pipeline < best.Pipeline) {
				c := o
				best = &c
			}
		}
	}
	if best == nil {
		return p, p.noFit()
	}
	p.Chosen = *best
	p.Replicas = (r.Nodes / best.Pipeline) * (r.GPUsPerNode / best.Tensor)
	p.explain()
	p.Run = p.runShape()
	return p, nil
}

// RunShape is how the job runs the plan: Replicas engines (PerNode on each node) of Tensor GPUs
// each, or one engine (Replicas 1) of the chosen split.
type RunShape struct {
	Replicas int    `json:"replicas"`
	PerNode  int    `json:"replicas_per_node"`
	Tensor   int    `json:"tensor_parallel_size"`
	Pipeline int    `json:"pipeline_parallel_size"`
	Why      string `json:"why"`
}

// runShape runs a model that fits on one node of several as replicas: each on as many GPUs as
// the model fits on and that divide a node's, as many per node as the node's GPUs hold, so that
// no GPU stays idle where the model allows; any other model as one engine.
func (p Plan) runShape() RunShape {
	c, r := p.Chosen, p.Request
	switch {
	case r.Nodes < 2:
		return RunShape{Replicas: 1, PerNode: 1, Tensor: c.Tensor, Pipeline: c.Pipeline, Why: "one engine on the one node"}
	case c.Pipeline > 1:
		return RunShape{Replicas: 1, PerNode: 1, Tensor: c.Tensor, Pipeline: c.Pipeline,
			Why: fmt.Sprintf("one engine over %d nodes: the model spans nodes, so it cannot run as replicas of one node each", c.Pipeline)}
	}
	tp := c.Tensor
	for _, o := range p.Considered {
		if o.Fits && o.Pipeline == 1 && o.Tensor > tp && r.GPUsPerNode%o.Tensor == 0 {
			tp = o.Tensor
		}
	}
	k := 1
	if r.GPUsPerNode%tp == 0 {
		k = r.GPUsPerNode / tp
	}
	why := fmt.Sprintf("the model fits on one node: %d replicas, %d per node, each of tensor parallel %d", r.Nodes*k, k, tp)
	if idle := r.GPUsPerNode - k*tp; idle > 0 {
		why += fmt.Sprintf(" (%d GPU(s) of each node idle: the model's split does not divide them)", idle)
	}
	return RunShape{Replicas: r.Nodes * k, PerNode: k, Tensor: tp, Pipeline: 1, Why: why + "; --replicas 1 runs one engine instead"}
}

// WeightsFor returns the weight bytes when loaded with a quantization or dtype override; a
// checkpoint that is quantized already keeps its stored size.
func (m Model) WeightsFor(quant, dtype string) int64 {
	if m.Quantization != "" || (quant == "" && dtype == "") {
		return m.WeightBytes
	}
	to := m.EstimateWeightBytes(normalQuant(quant), quantBits(quant), firstNonEmpty(dtype, m.Dtype))
	from := m.EstimateWeightBytes("", 0, m.Dtype)
	return int64(float64(m.WeightBytes) * float64(to) / float64(from))
}

func normalQuant(q string) string {
	switch q {
	case "", "none", "auto":
		return ""
	}
	return q
}

func quantBits(q string) int {
	switch q {
	case "int8", "fp8":
		return 8
	}
	return 4
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func kvBytes(m Model, r Request) int {
	if r.KVCacheDtype == "fp8" || strings.HasPrefix(r.KVCacheDtype, "fp8_") {
		return 1
	}
	if r.Dtype == "float32" || (r.Dtype == "" && m.Dtype == "float32") {
		return 4
	}
	return 2
}

// weigh works out one split: it must divide the heads as vLLM requires, hold its share of the
// weights, and leave room for one full sequence.
func (p *Plan) weigh(tp, pp, kvElem int) Option {
	m, r := p.Model, p.Request
	o := Option{Tensor: tp, Pipeline: pp, GPUs: tp * pp}
	if m.Heads%tp != 0 {
		o.Reason = fmt.Sprintf("tensor %d does not divide the %d attention heads", tp, m.Heads)
		return o
	}
	if !(m.KVHeads%tp == 0 || tp%m.KVHeads == 0) {
		o.Reason = fmt.Sprintf("tensor %d splits the %d KV heads unevenly (vLLM needs one to divide the other)", tp, m.KVHeads)
		return o
	}
	if pp > m.Layers {
		o.Reason = fmt.Sprintf("pipeline %d exceeds the %d layers", pp, m.Layers)
		return o
	}
	usable := int64(float64(r.GPUMemory) * r.MemoryUtil)
	o.WeightsPerGPU = ceilDiv(p.WeightBytes, int64(tp*pp))
	o.KVPerGPU = usable - o.WeightsPerGPU - RuntimeReserve
	kvHeadsPerGPU := int(math.Ceil(float64(m.KVHeads) / float64(tp)))
	layersPerStage := int(math.Ceil(float64(m.Layers) / float64(pp)))
	seqPerGPU := int64(2*layersPerStage*kvHeadsPerGPU*m.HeadDim*kvElem) * int64(r.MaxModelLen)
	if o.KVPerGPU > 0 {
		o.Sequences = int(o.KVPerGPU / seqPerGPU)
	}
	switch {
	case o.WeightsPerGPU+RuntimeReserve > usable:
		o.Reason = fmt.Sprintf("%s of weights per GPU (and %s for the runtime) exceed the %s usable", gb(o.WeightsPerGPU), gb(RuntimeReserve), gb(usable))
		o.KVPerGPU = 0
	case o.Sequences < 1:
		o.Reason = fmt.Sprintf("%s left per GPU after the weights; one %d-token sequence needs %s", gb(o.KVPerGPU), r.MaxModelLen, gb(seqPerGPU))
	default:
		o.Fits = true
		o.Reason = fmt.Sprintf("fits: %s of weights and %s of KV cache per GPU, %d sequences of %d tokens", gb(o.WeightsPerGPU), gb(o.KVPerGPU), o.Sequences, r.MaxModelLen)
	}
	return o
}

// The values the planner understands, as vLLM spells them.
var (
	dtypes        = []string{"auto", "half", "float16", "bfloat16", "float", "float32"}
	quantizations = []string{"none", "fp8", "int8", "int4", "awq", "awq_marlin", "gptq", "gptq_marlin", "bitsandbytes", "compressed-tensors"}
	kvCacheDtypes = []string{"auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2"}
)

// check refuses a request the planner cannot answer, naming what it accepts.
func (r Request) check() error {
	switch {
	case r.Nodes < 1 || r.GPUsPerNode < 1:
		return fmt.Errorf("%w: need at least 1 node and 1 GPU per node, got %d and %d", ErrRequest, r.Nodes, r.GPUsPerNode)
	case r.Tensor < 0 || r.Pipeline < 0 || r.MaxModelLen < 0:
		return fmt.Errorf("%w: tensor and pipeline sizes and the model length must not be negative (got %d, %d and %d)",
			ErrRequest, r.Tensor, r.Pipeline, r.MaxModelLen)
	case r.Tensor > r.GPUsPerNode:
		return fmt.Errorf("%w: tensor parallel size %d exceeds the %d GPUs of a node; tensor parallelism stays within a node",
			ErrRequest, r.Tensor, r.GPUsPerNode)
	case r.Pipeline > r.Nodes:
		return fmt.Errorf("%w: pipeline parallel size %d exceeds the %d node(s)", ErrRequest, r.Pipeline, r.Nodes)
	}
	for _, f := range []struct {
		name, value string
		accepted    []string
	}{{"dtype", r.Dtype, dtypes}, {"quantization", r.Quantization, quantizations}, {"kv-cache-dtype", r.KVCacheDtype, kvCacheDtypes}} {
		if f.value != "" && !slices.Contains(f.accepted, f.value) {
			return fmt.Errorf("%w: --%s %q is not one of %s", ErrRequest, f.name, f.value, strings.Join(f.accepted, ", "))
		}
	}
	return nil
}

func (p *Plan) noFit() error {
	r := p.Request
	total := int64(r.Nodes*r.GPUsPerNode) * r.GPUMemory
	usable := int64(float64(total) * r.MemoryUtil)
	if p.WeightBytes > usable {
		return fmt.Errorf("%w: needs %s for weights, allocation has %d×%s (%s usable at %.0f%%); add GPUs or nodes, or use a quantized checkpoint",
			ErrDoesNotFit, gb(p.WeightBytes), r.Nodes*r.GPUsPerNode, gb(r.GPUMemory), gb(usable), r.MemoryUtil*100)
	}
	reasons := make([]string, 0, len(p.Considered))
	for _, o := range p.Considered {
		reasons = append(reasons, fmt.Sprintf("tensor %d × pipeline %d: %s", o.Tensor, o.Pipeline, o.Reason))
	}
	return fmt.Errorf("%w: %s of weights plus one %d-token sequence (%s of KV cache) fit no split of %d node(s) × %d×%s: %s",
		ErrDoesNotFit, gb(p.WeightBytes), r.MaxModelLen, gb(p.SequenceBytes), r.Nodes, r.GPUsPerNode, gb(r.GPUMemory), strings.Join(reasons, "; "))
}

// explain lists why the smaller splits were passed over, smallest first.
func (p *Plan) explain() {
	sort.SliceStable(p.Considered, func(i, j int) bool {
		a, b := p.Considered[i], p.Considered[j]
		return a.GPUs < b.GPUs || a.GPUs == b.GPUs && a.Pipeline < b.Pipeline
	})
	for _, o := range p.Considered {
		if o.GPUs < p.Chosen.GPUs || o == p.Chosen {
			p.Why = append(p.Why, fmt.Sprintf("tensor %d × pipeline %d (%d GPU): %s", o.Tensor, o.Pipeline, o.GPUs, o.Reason))
		}
	}
	p.Why = append(p.Why, fmt.Sprintf("chosen: the fewest GPUs that hold the model and one full sequence, on the fewest nodes (%d)", p.Chosen.Pipeline))
}

// Summary is the plan in one line, as `run` logs it.
func (p Plan) Summary() string {
	return fmt.Sprintf("tensor %d × pipeline %d on %d GPU(s): %s weights, %s KV cache per token, %d sequence(s) of %d tokens, %d replica(s) fit the allocation",
		p.Chosen.Tensor, p.Chosen.Pipeline, p.Chosen.GPUs, gb(p.WeightBytes), kib(p.KVBytesPerToken), p.Chosen.Sequences,
		p.Request.MaxModelLen, p.Replicas)
}

func ceilDiv(a, b int64) int64 { return (a + b - 1) / b }

// gb formats bytes in decimal gigabytes, as GPU and model sizes are quoted.
func gb(b int64) string { return fmt.Sprintf("%.4g GB", float64(b)/1e9) }

func kib(b int64) string { return fmt.Sprintf("%.0f KiB", float64(b)/1024) }
