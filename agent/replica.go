package agent

import (
	"context"
	"slices"
	"strconv"
	"time"

	"github.com/llm-agent/llm-agent/agent/gateway"
	"github.com/llm-agent/llm-agent/agent/layout"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/vllm"
)

// ReplicaKeyFile is the job's internal key between the head's gateway and the workers' replica
// gateways, in the state directory (0600, new each run). No client key opens a replica.
const ReplicaKeyFile = "replica_key"

// Timing of the head's watch over the other replicas: a replica that does not answer ready
// leaves the rotation within one interval and one timeout.
const (
	replicaCheckInterval = time.Second
	replicaCheckTimeout  = 2 * time.Second
)

// replicated tells whether the job runs several replicas of the engine.
func (a *agent) replicated() bool { return a.replicas.Count > 1 }

// perNode is how many replicas each node runs: more than one when --replicas exceeds the
// nodes, each on its own share of the node's GPUs.
func (a *agent) perNode() int { return max(1, a.replicas.PerNode) }

// replicaName names a replica in the gateway's header, metrics and the connection file: its
// node, and its slot on the node when nodes run several.
func (a *agent) replicaName(host string, slot int) string {
	if a.perNode() == 1 {
		return host
	}
	return host + "/" + strconv.Itoa(slot)
}

// slotGPUs returns the GPUs of the replica in slot, a share of the node's visible ones, when
// the node runs several; nil leaves the engine the node's whole view.
func (a *agent) slotGPUs(slot int) []string {
	k, ids := a.perNode(), a.alloc.GPUIDs
	if k == 1 || len(ids) < k || len(ids)%k != 0 {
		return nil
	}
	per := len(ids) / k
	return ids[slot*per : (slot+1)*per]
}

// socketName is the engine socket of a slot, in the node's private directory.
func socketName(slot int) string {
	if slot == 0 {
		return vllm.SocketName
	}
	return "engine-" + strconv.Itoa(slot) + ".sock"
}

// childName names the engine of a slot among the node's children (logs, metrics).
func childName(slot int) string {
	if slot == 0 {
		return "vllm"
	}
	return "vllm-" + strconv.Itoa(slot)
}

// writeReplicaKey makes the run's replica key.
func writeReplicaKey(stateDir string) (string, error) {
	return writeRunSecret(stateDir, ReplicaKeyFile, "replica key", "sk-llm-replica-")
}

// readReplicaKey reads the run's replica key through the checked secret reader.
func readReplicaKey(stateDir string) (string, error) {
	return readRunSecret(stateDir, ReplicaKeyFile, "replica key")
}

// publishReplicas writes the replica key and the rendezvous that tells the workers to run their
// own replica.
func (h *head) publishReplicas() error {
	a := h.agent
	var err error
	if h.replicaKey, err = writeReplicaKey(a.stateDir); err != nil {
		return err
	}
	rv := h.rendezvous()
	rv.Tensor, rv.Pipeline, rv.Replicas, rv.PerNode = h.par.Tensor, 1, a.replicas.Count, a.perNode()
	rv.Models = layout.Placements(a.models, a.tensors)
	if err := jobfiles.WriteRendezvous(a.stateDir, rv); err != nil {
		return err
	}
	a.log.Info("rendezvous published; whole replicas of the engine, no Ray", "replicas", a.replicas.Count, "per_node", a.perNode())
	return nil
}

// watchReplicas keeps the gateway's list of the other nodes' replicas from their node files,
// and takes each out of the rotation, or back in, as its /readyz says.
func (h *head) watchReplicas(ctx context.Context) {
	a := h.agent
	// The other nodes that run replicas, and the head itself for its own further slots.
	hosts := a.alloc.Nodes[1:min(len(a.alloc.Nodes), a.replicas.Count)]
	if a.perNode() > 1 {
		hosts = a.alloc.Nodes
	}
	var known []jobfiles.NodeInfo // the node files the pool was last built from
	for {
		infos := jobfiles.ReadNodeInfos(a.stateDir, hosts)
		if !slices.EqualFunc(infos, known, sameReplica) {
			known = infos
			var reps []*gateway.Replica
			for _, n := range infos {
				for slot, port := range n.ReplicaPorts {
					if port == 0 {
						continue // the head's own engine
					}
					ep := vllm.Endpoint{Host: n.Address, Port: port}
					r := gateway.NewReplica(a.replicaName(n.Host, slot), ep, h.replicaKey)
					r.Model, r.LoRA = a.modelOf(n.Host)
					reps = append(reps, r)
				}
			}
			h.front.gw.SetReplicas(reps)
		}
		h.front.gw.CheckReplicas(ctx, replicaCheckTimeout, func(r *gateway.Replica, up bool) {
			a.log.Info("replica "+map[bool]string{true: "joins the rotation", false: "leaves the rotation"}[up], "replica", r.Name)
		})
		h.publishReplicaStates(infos)
		select {
		case <-ctx.Done():
			return
		case <-a.deps.Clock.After(replicaCheckInterval):
		}
	}
}

// sameReplica tells whether two node files name the same replica gateway.
func sameReplica(a, b jobfiles.NodeInfo) bool {
	return a.Host == b.Host && a.Address == b.Address && slices.Equal(a.ReplicaPorts, b.ReplicaPorts)
}

// publishReplicaStates writes every replica's state to the connection file: the workers'
// engine restarts come from their node files.
func (h *head) publishReplicaStates(infos []jobfiles.NodeInfo) {
	restarts := map[string]int{h.replicaName(h.alloc.Hostname(), 0): h.conn.Snapshot().Restarts["vllm"]}
	for _, n := range infos {
		for slot, count := range n.EngineRestarts {
			if n.Host != h.alloc.Hostname() || slot > 0 {
				restarts[h.replicaName(n.Host, slot)] = count
			}
		}
	}
	var out []jobfiles.Replica
	for _, r := range h.front.gw.Replicas() {
		state := "not ready"
		if r.Up() {
			state = "ready"
		}
		rep := jobfiles.Replica{Node: r.Name, GPUs: h.par.Tensor, State: state, Restarts: restarts[r.Name], InFlight: r.InFlight()}
		if h.multiModel() {
			rep.Model, rep.GPUs = r.Model, h.tensors[r.Model]
		}
		out = append(out, rep)
	}
	if err := h.conn.Update(func(c *jobfiles.Connection) { c.Replicas = out }); err != nil {
		h.log.Warn("cannot update the connection file", "error", err)
	}
	h.followReplicas()
}

// followReplicas keeps the service's state that of its replicas: ready while any serves, even
// with the head's own engine down, and starting or restarting while none does.
func (h *head) followReplicas() {
	if h.draining.Load() {
		return
	}
	up := h.remoteUp()
	if ok, _ := h.state.Ready(); ok {
		up = true
	}
	switch cur := h.conn.Snapshot().State; {
	case up && (cur == jobfiles.StateStarting || cur == jobfiles.StateRestarting):
		_ = h.conn.SetState(jobfiles.StateReady, "")
	case !up && cur == jobfiles.StateReady:
		state := jobfiles.StateStarting
		if h.conn.EverReady() {
			state = jobfiles.StateRestarting
		}
		_ = h.conn.SetState(state, "no replica is ready")
	}
}

// remoteUp tells whether another node's replica is in the rotation.
func (h *head) remoteUp() bool {
	for _, r := range h.front.gw.Replicas()[1:] {
		if r.Up() {
			return true
		}
	}
	return false
}
