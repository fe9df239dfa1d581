package vllm

import "strconv"

// ServeSpec is what `vllm serve` is started with.
type ServeSpec struct {
	Model, ServedName string
	// Host and Port are the engine's TCP address; Socket, when set, is its Unix socket instead.
	Host   string
	Port   int
	Socket string
	// Tensor and Pipeline are the parallel sizes.
	Tensor, Pipeline int
	// RayExecutor selects vLLM's Ray executor, for a pipeline across nodes.
	RayExecutor bool
	// Nodes > 1 spreads the engine over that many nodes without Ray (vLLM's --nnodes mode,
	// its mp executor): NodeRank is this node's rank, and rank 0's MasterAddr and MasterPort
	// are where the ranks meet. Every rank but 0 runs headless: no API, so no address.
	Nodes, NodeRank int
	MasterAddr      string
	MasterPort      int
	// LoRA enables adapters up to MaxLoRARank and serves Adapters, each under its name.
	LoRA        bool
	MaxLoRARank int
	Adapters    []Adapter
	// Extra are the user's pass-through arguments, checked with CheckExtraArgs.
	Extra []string
}

// ServeArgs returns the arguments of `vllm serve`, without the executable.
func ServeArgs(s ServeSpec) []string {
	itoa := strconv.Itoa
	args := []string{"serve", s.Model}
	switch {
	case s.Nodes > 1 && s.NodeRank > 0:
	case s.Socket != "":
		args = append(args, "--uds", s.Socket)
	default:
		args = append(args, "--host", s.Host, "--port", itoa(s.Port))
	}
	args = append(args,
		"--served-model-name", s.ServedName,
		"--tensor-parallel-size", itoa(s.Tensor),
		"--pipeline-parallel-size", itoa(s.Pipeline),
	)
	switch {
	case s.Nodes > 1:
		args = append(args, "--distributed-executor-backend", "mp", "--nnodes", itoa(s.Nodes), "--node-rank", itoa(s.NodeRank),
			"--master-addr", s.MasterAddr, "--master-port", itoa(s.MasterPort))
		if s.NodeRank > 0 {
			args = append(args, "--headless")
		}
	case s.RayExecutor:
		args = append(args, "--distributed-executor-backend", "ray")
	}
	if s.LoRA {
		args = append(args, LoRAArgs(s.Adapters, s.MaxLoRARank, s.ServedName)...)
	}
	return append(args, s.Extra...)
}
