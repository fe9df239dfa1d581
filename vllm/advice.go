package vllm

import "strings"

// OutOfGPUMemory tells whether an engine's error line says it ran out of GPU memory: PyTorch's
// OutOfMemoryError ("CUDA out of memory"), or vLLM's own words when the KV cache does not fit.
func OutOfGPUMemory(said string) bool {
	for _, s := range []string{"CUDA out of memory", "OutOfMemoryError", "larger than the available KV cache memory",
		"No available memory for the cache blocks"} {
		if strings.Contains(said, s) {
			return true
		}
	}
	return false
}

// GPUMemoryAdvice is what to change when the engine ran out of GPU memory.
const GPUMemoryAdvice = "the model and its KV cache do not fit the GPUs as configured: lower --max-model-len or " +
	"--max-num-seqs (--vllm-arg), give more GPUs to each engine (tensor parallel), or raise " +
	"--gpu-memory-utilization if nothing else uses the GPUs"
