// Package agent is one node's run: it checks the configuration, reads the allocation, elects
// the head, picks the ports, and runs the head's or the worker's stages in order (metrics,
// gateway, files, Ray, engine), stopping them in reverse. It also answers `status` and `usage`.
// It holds the wiring only: Slurm's environment is in slurm, Ray in ray, vLLM in vllm, the
// processes in supervisor, the shared files in jobfiles, the front door in agent/gateway.
package agent
