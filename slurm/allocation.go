// Package slurm is what llm-agent knows of Slurm: the job's allocation as Slurm's environment
// describes it, hostlist expressions, Slurm's time formats, and the squeue query for a job's end.
// It knows nothing of Ray, vLLM or the agent's files.
package slurm

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// ErrAllocation is wrapped by every error about the Slurm environment.
var ErrAllocation = errors.New("invalid Slurm allocation")

// Allocation is what this node's agent knows of the job, read once from the environment.
type Allocation struct {
	// JobID is SLURM_JOB_ID, or "local-PID" outside Slurm.
	JobID string
	// Nodes is SLURM_JOB_NODELIST expanded, in Slurm's order; the first is the head.
	Nodes []string
	// NodeID is this node's index in Nodes (SLURM_NODEID).
	NodeID int
	// GPUs is the number of GPUs this node has in the job.
	GPUs int
	// GPUIDs is CUDA_VISIBLE_DEVICES split on commas (indices or UUIDs), empty when unset.
	GPUIDs []string
	// CPUs is SLURM_CPUS_ON_NODE, 0 when unknown.
	CPUs int
	// EndTime is SLURM_JOB_END_TIME, zero when unknown.
	EndTime time.Time
	// RestartCount is SLURM_RESTART_COUNT; a requeued job gets a fresh rendezvous.
	RestartCount int
	// StepID is SLURM_STEP_ID: two sruns in one job do not take each other's rendezvous.
	StepID string
	// LaunchID names the srun that started this step (its host and port), so that a rendezvous
	// left by an earlier run with a reused job id is never taken for this one.
	LaunchID string
	// SubmitHost is SLURM_SUBMIT_HOST, the default login host for the SSH tunnel.
	SubmitHost string
	// Local is true when no Slurm job was found and this host runs as a one-node allocation.
	Local bool
}

// Hostname returns this node's name.
func (a Allocation) Hostname() string { return a.Nodes[a.NodeID] }

// Head returns the head's host name: the first host of the node list.
func (a Allocation) Head() string { return a.Nodes[0] }

// IsHead reports whether this node is the head. Every agent computes this alone.
func (a Allocation) IsHead() bool { return a.NodeID == 0 }

// TotalGPUs is the number of GPUs in the job.
func (a Allocation) TotalGPUs() int { return a.GPUs * len(a.Nodes) }

// AllocationFromEnv reads the allocation from getenv. Without SLURM_JOB_ID it describes a
// one-node allocation of this host, named by hostname.
func AllocationFromEnv(getenv func(string) string, hostname string) (Allocation, error) {
	a := Allocation{GPUIDs: splitList(getenv("CUDA_VISIBLE_DEVICES"))}
	if len(a.GPUIDs) == 1 && a.GPUIDs[0] == "NoDevFiles" {
		// Slurm's value when the GPU gres has no device files.
		a.GPUIDs = nil
	}
	var err error
	if a.GPUs, err = gpuCount(getenv, a.GPUIDs); err != nil {
		return Allocation{}, err
	}
	if a.CPUs, err = optionalInt(getenv, "SLURM_CPUS_ON_NODE"); err != nil {
		return Allocation{}, err
	}
	a.JobID = getenv("SLURM_JOB_ID")
	if a.JobID == "" {
		a.Local = true
		a.JobID = "local-" + strconv.Itoa(os.Getpid())
		a.Nodes = []string{hostname}
		return a, nil
	}
	if strings.ContainsAny(a.JobID, "/\\ \t\n") || a.JobID == "." || a.JobID == ".." {
		return Allocation{}, fmt.Errorf("%w: SLURM_JOB_ID=%q is not a job id", ErrAllocation, a.JobID)
	}
	list := getenv("SLURM_JOB_NODELIST")
	if list == "" {
		return Allocation{}, fmt.Errorf("%w: SLURM_JOB_ID is set but SLURM_JOB_NODELIST is empty; run the agent with srun inside the job", ErrAllocation)
	}
	if a.Nodes, err = ExpandHostlist(list); err != nil {
		return Allocation{}, fmt.Errorf("%w: SLURM_JOB_NODELIST: %w", ErrAllocation, err)
	}
	if len(a.Nodes) == 0 {
		return Allocation{}, fmt.Errorf("%w: SLURM_JOB_NODELIST=%q names no host", ErrAllocation, list)
	}
	if a.NodeID, err = nodeID(getenv, a.Nodes, hostname); err != nil {
		return Allocation{}, err
	}
	if a.RestartCount, err = optionalInt(getenv, "SLURM_RESTART_COUNT"); err != nil {
		return Allocation{}, err
	}
	if v := getenv("SLURM_JOB_END_TIME"); v != "" {
		sec, err := strconv.ParseInt(v, 10, 64)
		if err != nil || sec < 0 {
			return Allocation{}, fmt.Errorf("%w: SLURM_JOB_END_TIME=%q is not a Unix time", ErrAllocation, v)
		}
		if sec > 0 {
			a.EndTime = time.Unix(sec, 0)
		}
	}
	a.SubmitHost = getenv("SLURM_SUBMIT_HOST")
	a.StepID = getenv("SLURM_STEP_ID")
	if port := getenv("SLURM_SRUN_COMM_PORT"); port != "" {
		a.LaunchID = getenv("SLURM_LAUNCH_NODE_IPADDR") + ":" + port
	}
	return a, nil
}

// nodeID finds this node's index: SLURM_NODEID when set, else this host's place in the list.
func nodeID(getenv func(string) string, nodes []string, hostname string) (int, error) {
	if v := getenv("SLURM_NODEID"); v != "" {
		id, err := strconv.Atoi(v)
		if err != nil || id < 0 || id >= len(nodes) {
			return 0, fmt.Errorf("%w: SLURM_NODEID=%q is not an index into the %d nodes of SLURM_JOB_NODELIST", ErrAllocation, v, len(nodes))
		}
		return id, nil
	}
	name := getenv("SLURMD_NODENAME")
	if name == "" {
		name = hostname
	}
	short, _, _ := strings.Cut(name, ".")
	for i, n := range nodes {
		if n == name || n == short {
			return i, nil
		}
	}
	return 0, fmt.Errorf("%w: this host %q is not in SLURM_JOB_NODELIST %v and SLURM_NODEID is unset", ErrAllocation, name, nodes)
}

func gpuCount(getenv func(string) string, ids []string) (int, error) {
	if v := getenv("SLURM_GPUS_ON_NODE"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("%w: SLURM_GPUS_ON_NODE=%q is not a count", ErrAllocation, v)
		}
		if len(ids) > 0 && n != len(ids) {
			return 0, fmt.Errorf("%w: SLURM_GPUS_ON_NODE=%d but CUDA_VISIBLE_DEVICES lists %d GPUs", ErrAllocation, n, len(ids))
		}
		return n, nil
	}
	return len(ids), nil
}

func optionalInt(getenv func(string) string, name string) (int, error) {
	v := getenv(name)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%w: %s=%q is not a count", ErrAllocation, name, v)
	}
	return n, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// Shape is the size of a job as its environment gives it, without this node's place in it: what
// the planner needs, also on a login node inside salloc, where this host is not in the list.
type Shape struct {
	// InJob is true when SLURM_JOB_ID is set.
	InJob bool
	// Nodes is SLURM_JOB_NUM_NODES, 0 when unknown.
	Nodes int
	// GPUsPerNode is SLURM_GPUS_ON_NODE, or the length of GPUIDs; 0 when unknown.
	GPUsPerNode int
	// GPUIDs is CUDA_VISIBLE_DEVICES split on commas.
	GPUIDs []string
}

// ShapeFromEnv reads the job's shape from getenv.
func ShapeFromEnv(getenv func(string) string) (Shape, error) {
	s := Shape{InJob: getenv("SLURM_JOB_ID") != "", GPUIDs: splitList(getenv("CUDA_VISIBLE_DEVICES"))}
	var err error
	if s.Nodes, err = optionalInt(getenv, "SLURM_JOB_NUM_NODES"); err != nil {
		return Shape{}, err
	}
	if s.GPUsPerNode, err = gpuCount(getenv, s.GPUIDs); err != nil {
		return Shape{}, err
	}
	return s, nil
}
