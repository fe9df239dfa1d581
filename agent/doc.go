// Package agent is one node's run, and the facade that cmd and e2e call: it reads the
// allocation, elects the head, and runs the head's or the worker's stages in order (metrics,
// gateway, files, Ray, engine), stopping them in reverse (agent/lifecycle). The rooms below it
// hold the parts: agent/config (the checked configuration), agent/layout (where each model runs
// and how it is split), agent/node (the node's address and ports), agent/service (a service's
// chain), agent/status (status and usage), agent/gateway (the front door), agent/metrics.
// Slurm's environment is in slurm, Ray in ray, vLLM in vllm, the processes in supervisor, the
// shared files in jobfiles.
package agent
