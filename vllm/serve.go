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
	// Extra are the user's pass-through arguments, checked with CheckExtraArgs.
	Extra []string
}

// ServeArgs returns the arguments of `vllm serve`, without the executable.
func ServeArgs(s ServeSpec) []string {
	itoa := strconv.Itoa
	args := []string{"serve", s.Model}
	if s.Socket != "" {
		args = append(args, "--uds", s.Socket)
	} else {
		args = append(args, "--host", s.Host, "--port", itoa(s.Port))
	}
	args = append(args,
		"--served-model-name", s.ServedName,
		"--tensor-parallel-size", itoa(s.Tensor),
		"--pipeline-parallel-size", itoa(s.Pipeline),
	)
	if s.RayExecutor {
		args = append(args, "--distributed-executor-backend", "ray")
	}
	return append(args, s.Extra...)
}
