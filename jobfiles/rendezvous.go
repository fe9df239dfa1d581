package jobfiles

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/llm-agent/llm-agent/clock"
)

// ErrRendezvousTimeout is returned when the head's rendezvous file does not appear in time.
var ErrRendezvousTimeout = errors.New("rendezvous timed out")

// RendezvousFile is the name of the head's rendezvous file in the state directory.
const RendezvousFile = "rendezvous.json"

// Rendezvous is what the head publishes for the workers: where Ray is and which ports to use.
type Rendezvous struct {
	JobID        string    `json:"job_id"`
	RestartCount int       `json:"restart_count"`
	StepID       string    `json:"step_id,omitempty"`
	LaunchID     string    `json:"launch_id,omitempty"`
	HeadHost     string    `json:"head_host"`
	HeadAddress  string    `json:"head_address"`
	Ports        Ports     `json:"ports"`
	CreatedAt    time.Time `json:"created_at"`
	// Launcher is how the engine spans the nodes: "ray" (also when empty) or "mp", vLLM's own
	// multi-node mode, in which every worker runs a rank of the engine. Tensor and Pipeline are
	// the engine's sizes, which every rank starts with.
	Launcher string `json:"launcher,omitempty"`
	Tensor   int    `json:"tensor_parallel_size,omitempty"`
	Pipeline int    `json:"pipeline_parallel_size,omitempty"`
	// Replicas > 1: the first Replicas nodes each run a whole engine of their own (Tensor
	// GPUs, no pipeline), the workers' behind their node's gateway, and the head routes to all;
	// with PerNode > 1, every node runs PerNode of them, each on its own Tensor GPUs.
	Replicas int `json:"replicas,omitempty"`
	PerNode  int `json:"replicas_per_node,omitempty"`
	// Models place the models of a job that serves several: a worker runs a replica of the
	// model whose nodes name it, on that model's Tensor GPUs.
	Models []ModelPlacement `json:"models,omitempty"`
}

// RayAddress returns the GCS address workers join, HOST:PORT.
func (r Rendezvous) RayAddress() string {
	return net.JoinHostPort(r.HeadAddress, strconv.Itoa(r.Ports.RayGCS))
}

// matches tells a rendezvous of this run from a stale one left by an earlier step or requeue.
func (r Rendezvous) matches(want Rendezvous) bool {
	return r.JobID == want.JobID && r.RestartCount == want.RestartCount && r.StepID == want.StepID &&
		r.LaunchID == want.LaunchID
}

// WriteRendezvous publishes r atomically in dir.
func WriteRendezvous(dir string, r Rendezvous) error {
	return WriteJSONAtomic(filepath.Join(dir, RendezvousFile), r, 0o644)
}

// ReadRendezvous reads the rendezvous file in dir.
func ReadRendezvous(dir string) (Rendezvous, error) {
	var r Rendezvous
	b, err := os.ReadFile(filepath.Join(dir, RendezvousFile))
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("parse %s: %w", RendezvousFile, err)
	}
	return r, nil
}

// WaitRendezvous polls dir until the head has published the rendezvous of this run (same job,
// requeue count and step as want), or the timeout passes. A shared filesystem gives no reliable
// change notification, so polling the file is the real condition.
func WaitRendezvous(ctx context.Context, clk clock.Clock, dir string, want Rendezvous, timeout, interval time.Duration) (Rendezvous, error) {
	deadline := clk.Now().Add(timeout)
	var last error
	for {
		r, err := ReadRendezvous(dir)
		switch {
		case err == nil && r.matches(want):
			return r, nil
		case err == nil:
			last = fmt.Errorf("found a stale rendezvous of job %s restart %d step %q launch %q", r.JobID, r.RestartCount, r.StepID, r.LaunchID)
		case !errors.Is(err, os.ErrNotExist):
			last = err
		}
		if !clk.Now().Before(deadline) {
			msg := fmt.Sprintf("no rendezvous from head %s in %s in %s", want.HeadHost, dir, timeout)
			if last != nil {
				msg += " (" + last.Error() + ")"
			}
			return Rendezvous{}, fmt.Errorf("%w: %s; check the head's job output and that %s is on a filesystem every node shares", ErrRendezvousTimeout, msg, dir)
		}
		select {
		case <-ctx.Done():
			return Rendezvous{}, ctx.Err()
		case <-clk.After(min(interval, deadline.Sub(clk.Now()))):
		}
	}
}

// NodeInfo is what each node's agent publishes about itself in nodes/HOST.json.
type NodeInfo struct {
	Host        string `json:"host"`
	Address     string `json:"address"`
	Role        string `json:"role"`
	MetricsPort int    `json:"metrics_port"`
	GPUs        int    `json:"gpus"`
	PID         int    `json:"pid"`
	// Ended is why the node's agent failed, once it has; empty while it runs or after a stop.
	Ended string `json:"ended,omitempty"`
	// Stopping is set when the node's agent was asked to stop (scancel, the time limit).
	Stopping bool `json:"stopping,omitempty"`
	// EngineEnded is set when this node's rank of an engine across nodes ended by itself.
	EngineEnded *EngineEnd `json:"engine_ended,omitempty"`
	// ReplicaPorts are where the node's replica gateways listen, on Address, one per replica
	// the node runs (by slot; 0 for the head's own engine, which its gateway serves).
	ReplicaPorts []int `json:"replica_ports,omitempty"`
	// EngineRestarts counts the restarts of each replica's engine, by slot.
	EngineRestarts []int `json:"engine_restarts,omitempty"`
}

// EngineEnd says which generation of the engine a rank belonged to, and how it ended.
type EngineEnd struct {
	Generation int    `json:"generation"`
	Reason     string `json:"reason"`
}

// MetricsURL returns the node's metrics endpoint.
func (n NodeInfo) MetricsURL() string {
	return "http://" + net.JoinHostPort(n.Address, strconv.Itoa(n.MetricsPort)) + "/metrics"
}

func nodeInfoPath(dir, host string) string {
	return filepath.Join(dir, "nodes", host+".json")
}

// WriteNodeInfo publishes n in dir/nodes.
func WriteNodeInfo(dir string, n NodeInfo) error {
	if err := os.MkdirAll(filepath.Join(dir, "nodes"), 0o755); err != nil {
		return fmt.Errorf("publish node info: %w", err)
	}
	return WriteJSONAtomic(nodeInfoPath(dir, n.Host), n, 0o644)
}

// ReadNodeInfos reads the published node infos of hosts, in their order, skipping hosts that
// have not published yet.
func ReadNodeInfos(dir string, hosts []string) []NodeInfo {
	var out []NodeInfo
	for _, h := range hosts {
		b, err := os.ReadFile(nodeInfoPath(dir, h))
		if err != nil {
			continue
		}
		var n NodeInfo
		if json.Unmarshal(b, &n) == nil {
			out = append(out, n)
		}
	}
	return out
}
