package head

import (
	"context"
	"slices"
	"time"

	"github.com/llm-agent/llm-agent/agent/gateway"
	"github.com/llm-agent/llm-agent/agent/layout"
	"github.com/llm-agent/llm-agent/agent/secrets"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/vllm"
)

// Timing of the head's watch over the other replicas: a replica that does not answer ready
// leaves the rotation within one interval and one timeout.
const (
	replicaCheckInterval = time.Second
	replicaCheckTimeout  = 2 * time.Second
)

// publishReplicas writes the replica key and the rendezvous that tells the workers to run their
// own replica.
func (h *head) publishReplicas() error {
	e := h.env
	var err error
	if h.replicaKey, err = secrets.WriteReplicaKey(e.StateDir); err != nil {
		return err
	}
	rv := h.rendezvous()
	rv.Tensor, rv.Pipeline, rv.Replicas, rv.PerNode = h.env.Par.Tensor, 1, e.Replicas.Count, e.PerNode()
	rv.Models = layout.Placements(e.Models, e.Tensors)
	if err := jobfiles.WriteRendezvous(e.StateDir, rv); err != nil {
		return err
	}
	e.Log.Info("rendezvous published; whole replicas of the engine, no Ray", "replicas", e.Replicas.Count, "per_node", e.PerNode())
	return nil
}

// watchReplicas keeps the gateway's list of the other nodes' replicas from their node files,
// and takes each out of the rotation, or back in, as its /readyz says.
func (h *head) watchReplicas(ctx context.Context) {
	e := h.env
	// The other nodes that run replicas, and the head itself for its own further slots.
	hosts := e.Alloc.Nodes[1:min(len(e.Alloc.Nodes), e.Replicas.Count)]
	if e.PerNode() > 1 {
		hosts = e.Alloc.Nodes
	}
	var known []jobfiles.NodeInfo // the node files the pool was last built from
	for {
		infos := jobfiles.ReadNodeInfos(e.StateDir, hosts)
		if !slices.EqualFunc(infos, known, sameReplica) {
			known = infos
			var reps []*gateway.Replica
			for _, n := range infos {
				for slot, port := range n.ReplicaPorts {
					if port == 0 {
						continue // the head's own engine
					}
					ep := vllm.Endpoint{Host: n.Address, Port: port}
					r := gateway.NewReplica(e.ReplicaName(n.Host, slot), ep, h.replicaKey)
					r.Model, r.LoRA = e.ModelOf(n.Host)
					reps = append(reps, r)
				}
			}
			h.rotation.setJob(h.front.Gateway(), reps)
		}
		h.front.Gateway().CheckReplicas(ctx, replicaCheckTimeout, func(r *gateway.Replica, up bool) {
			e.Log.Info("replica "+map[bool]string{true: "joins the rotation", false: "leaves the rotation"}[up], "replica", r.Name)
		})
		h.publishReplicaStates(infos)
		select {
		case <-ctx.Done():
			return
		case <-e.Clock.After(replicaCheckInterval):
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
	restarts := map[string]int{h.env.ReplicaName(h.env.Alloc.Hostname(), 0): h.conn.Snapshot().Restarts["vllm"]}
	for _, n := range infos {
		for slot, count := range n.EngineRestarts {
			if n.Host != h.env.Alloc.Hostname() || slot > 0 {
				restarts[h.env.ReplicaName(n.Host, slot)] = count
			}
		}
	}
	var out []jobfiles.Replica
	for _, r := range h.front.Gateway().Replicas() {
		state := "not ready"
		if r.Up() {
			state = "ready"
		}
		rep := jobfiles.Replica{Node: r.Name, GPUs: h.env.Par.Tensor, State: state, Restarts: restarts[r.Name], InFlight: r.InFlight()}
		if h.env.MultiModel() {
			rep.Model, rep.GPUs = r.Model, h.env.Tensors[r.Model]
		}
		out = append(out, rep)
	}
	if err := h.conn.Update(func(c *jobfiles.Connection) { c.Replicas = out }); err != nil {
		h.env.Log.Warn("cannot update the connection file", "error", err)
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
	if ok, _ := h.env.State.Ready(); ok {
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
	for _, r := range h.front.Gateway().Replicas()[1:] {
		if r.Up() {
			return true
		}
	}
	return false
}
