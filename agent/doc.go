// Package agent is one node's run, and the facade that cmd and e2e call: it checks the input,
// derives the node's environment (agent/node: the configuration of the model this node
// serves, the plan, the replicas, its directories, address and executables) and hands it to
// the head (agent/head) or a worker (agent/worker), which run their stages in order and stop
// them in reverse (agent/lifecycle). The rooms below import only rooms below them; the order
// is in architecture_test.go. Slurm's environment is in slurm, Ray in ray, vLLM in vllm, the
// processes in supervisor, the shared files in jobfiles.
package agent
