package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llm-agent/llm-agent/agent/bytesize"
	"github.com/llm-agent/llm-agent/agent/gateway"
	"github.com/llm-agent/llm-agent/healthcheck"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/supervisor"
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

// How fast an engine that stops answering leaves the rotation of a job with replicas: it is
// probed every interval, and out once silent for answeringAfter with no request making
// progress; the head's check each replicaCheckInterval then sees it, within 5 s in all.
const (
	answeringInterval = time.Second
	answeringTimeout  = 2 * time.Second
	answeringAfter    = 3 * time.Second
)

// answering follows whether the engine of a replica answers now (healthcheck.Responsiveness),
// a new watch for each engine started.
type answering struct {
	watch atomic.Pointer[healthcheck.Responsiveness]
}

// follow watches a new engine until ctx ends.
func (w *answering) follow(ctx context.Context, a *agent, eng vllm.Probe, activity func() healthcheck.Activity) {
	r := &healthcheck.Responsiveness{Probe: eng.Health, Interval: answeringInterval, Timeout: answeringTimeout,
		After: answeringAfter, Activity: activity, Clock: a.deps.Clock}
	w.watch.Store(r)
	go r.Run(ctx)
}

// ready is ready, less the time the engine does not answer.
func (w *answering) ready(ready func() (bool, string)) func() (bool, string) {
	return func() (bool, string) {
		ok, why := ready()
		if r := w.watch.Load(); ok && r != nil && !r.Responsive() {
			return false, "the engine does not answer"
		}
		return ok, why
	}
}

// replicated tells whether the job runs several replicas of the engine.
func (a *agent) replicated() bool { return a.cfg.Replicas > 1 }

// perNode is how many replicas each node runs: more than one when --replicas exceeds the
// nodes, each on its own share of the node's GPUs.
func (a *agent) perNode() int { return max(1, a.slots) }

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
	rv := jobfiles.Rendezvous{JobID: a.alloc.JobID, RestartCount: a.alloc.RestartCount, StepID: a.alloc.StepID,
		LaunchID: a.alloc.LaunchID, HeadHost: a.alloc.Head(), HeadAddress: a.addr, Ports: h.ports, CreatedAt: time.Now().UTC(),
		Tensor: h.par.Tensor, Pipeline: 1, Replicas: a.cfg.Replicas, PerNode: a.perNode(), Models: modelPlacements(a.models, a.tensors)}
	if err := jobfiles.WriteRendezvous(a.stateDir, rv); err != nil {
		return err
	}
	a.log.Info("rendezvous published; whole replicas of the engine, no Ray", "replicas", a.cfg.Replicas, "per_node", a.perNode())
	return nil
}

// watchReplicas keeps the gateway's list of the other nodes' replicas from their node files,
// and takes each out of the rotation, or back in, as its /readyz says.
func (h *head) watchReplicas(ctx context.Context) {
	a := h.agent
	// The other nodes that run replicas, and the head itself for its own further slots.
	hosts := a.alloc.Nodes[1:min(len(a.alloc.Nodes), a.cfg.Replicas)]
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
		h.everReady.Store(true)
		_ = h.conn.SetState(jobfiles.StateReady, "")
	case !up && cur == jobfiles.StateReady:
		state := jobfiles.StateStarting
		if h.everReady.Load() {
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

// replicaStage runs one replica of this node, in slot: the engine on its private socket,
// supervised and probed as the head's is, behind a gateway on the node's address that opens to
// the job's replica key only. Workers run one per slot; the head, its slots after the first.
func (a *agent) replicaStage(run context.Context, rv jobfiles.Rendezvous, port, slot int) stage {
	var stop func()
	return stage{name: "replica " + a.replicaName(a.alloc.Hostname(), slot), start: func(context.Context) (<-chan error, error) {
		r, err := a.newReplica(rv, port, slot)
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithCancel(run)
		errc := make(chan error, 2)
		go func() {
			if err := r.srv.Serve(r.ln); !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("replica gateway: %w", err)
			}
		}()
		go func() {
			defer r.closeOut()
			errc <- r.svc.Run(ctx)
		}()
		done, finished := ended(errc, func(err error) error { return fmt.Errorf("replica %s: %w", r.name, err) })
		stop = func() {
			dctx, dcancel := context.WithTimeout(run, a.cfg.Grace/2)
			r.gw.Drain(dctx)
			dcancel()
			cancel()
			<-finished
			sctx, scancel := context.WithTimeout(context.Background(), gatewayCloseTimeout)
			r.srv.Shutdown(sctx)
			scancel()
		}
		return done, nil
	}, stop: func() { stop() }}
}

// replica is one engine of a node and its gateway.
type replica struct {
	a         *agent
	slot      int
	name      string
	svc       *supervisor.Service
	gw        *gateway.Gateway
	srv       *http.Server
	ln        net.Listener
	closeOut  func()
	engineKey string
	eng       vllm.Endpoint
	answering answering

	mu        sync.Mutex
	stopProbe context.CancelFunc
	ready     bool
	why       string
}

// readiness is the replica's engine's: ready between its readiness probe and its end.
func (r *replica) readiness() (bool, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ready, r.why
}

// setReady records the engine's readiness; a worker's first replica is the node's too.
func (r *replica) setReady(ok bool, why string) {
	r.ready, r.why = ok, why
	if r.slot == 0 && !r.a.alloc.IsHead() {
		r.a.state.SetReady(ok, why, time.Now())
	}
}

func (a *agent) newReplica(rv jobfiles.Rendezvous, port, slot int) (*replica, error) {
	key, err := readReplicaKey(a.stateDir)
	if err != nil {
		return nil, err
	}
	r := &replica{a: a, slot: slot, name: a.replicaName(a.alloc.Hostname(), slot), why: "starting",
		eng: vllm.Endpoint{Socket: filepath.Join(a.localDir, socketName(slot))}}
	if r.engineKey, err = GenerateKey(); err != nil {
		return nil, err
	}
	maxBody, err := bytesize.Parse(a.cfg.MaxRequestBody)
	if err != nil {
		return nil, fmt.Errorf("%w: --max-request-body: %w", ErrConfig, err)
	}
	fixed, err := gateway.NewKeySet([]gateway.Key{{Name: "head", Key: key}})
	if err != nil {
		return nil, err
	}
	keys, err := gateway.NewKeys("", fixed, a.log.Named("gateway"))
	if err != nil {
		return nil, err
	}
	// The head's gateway has already checked the client's key, limits and model access; this
	// one admits the head alone, and keeps no audit of its own.
	r.gw = gateway.New(gateway.Options{Engine: r.eng, EngineKey: r.engineKey, Keys: keys, Ready: r.answering.ready(r.readiness),
		MaxBody: maxBody, LoRA: a.lora.on(), OwnerKey: key, OnAdapter: a.lora.changed, Name: r.name, Logger: a.log.Named("gateway")})
	if r.ln, err = net.Listen("tcp", net.JoinHostPort(a.addr, strconv.Itoa(port))); err != nil {
		return nil, fmt.Errorf("%w: replica port %d: %w", ErrPort, port, err)
	}
	r.srv = &http.Server{Handler: r.gw.Handler(), ReadHeaderTimeout: readHeaderTimeout, IdleTimeout: 2 * time.Minute}
	child := childName(slot)
	out, closeOut, err := a.childOutput(child)
	if err != nil {
		r.ln.Close()
		return nil, err
	}
	r.closeOut = closeOut
	spec := vllm.ServeSpec{Model: a.cfg.Model, ServedName: a.cfg.ServedName(), Socket: r.eng.Socket, Tensor: replicaTensor(rv, a.alloc.Hostname()), Pipeline: 1,
		Extra: a.cfg.VLLMArgs}
	env := append(os.Environ(), "VLLM_API_KEY="+r.engineKey, "VLLM_HOST_IP="+a.addr)
	if gpus := a.slotGPUs(slot); gpus != nil {
		env = append(env, "CUDA_VISIBLE_DEVICES="+strings.Join(gpus, ","))
	}
	if a.lora.on() {
		env = append(env, vllm.RuntimeLoRAEnv)
	}
	opts := a.serviceOptions(child)
	opts.Command = func() (supervisor.Options, error) {
		if err := removeStaleSocket(spec.Socket); err != nil {
			return supervisor.Options{}, err
		}
		return supervisor.Options{Name: child, Path: a.vllmBin, Args: vllm.ServeArgs(a.lora.spec(spec)), Env: env,
			Stdout: out, Stderr: out, Grace: a.cfg.Grace / 4, Reaper: a.deps.Reaper}, nil
	}
	opts.OnEvent = func(e supervisor.Event) {
		if e.State == supervisor.StateStarting {
			out.NewRun()
			if e.Restarts > 0 { // the head shows it with the replica
				if err := jobfiles.WriteEngineRestarts(a.stateDir, a.alloc.Hostname(), slot, e.Restarts); err != nil {
					a.log.Warn("cannot publish the engine's restarts", "error", err)
				}
			}
		}
		a.trackChild(e)
		r.follow(e)
	}
	r.svc = supervisor.NewService(opts)
	return r, nil
}

// follow probes each new engine until it is ready, then for liveness; the replica's gateway
// answers ready only in between.
func (r *replica) follow(e supervisor.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopProbe != nil {
		r.stopProbe()
		r.stopProbe = nil
	}
	if e.State != supervisor.StateRunning {
		r.setReady(false, "engine "+string(e.State))
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.stopProbe = cancel
	go r.probe(ctx)
}

func (r *replica) probe(ctx context.Context) {
	a := r.a
	eng := vllm.Probe{BaseURL: r.eng.BaseURL(), APIKey: r.engineKey, Client: &http.Client{Transport: r.eng.Transport(3)}}
	r.answering.follow(ctx, a, eng, r.gw.Activity)
	a.followEngine(ctx, eng, r.svc, r.gw.Activity, func() {
		r.mu.Lock()
		r.setReady(true, "")
		r.mu.Unlock()
		a.log.Info("replica ready", "replica", r.name, "since_start", time.Since(a.started).Round(time.Millisecond))
	})
}

// replicaTensor is the GPUs of a host's replica: its model's, in a job that serves several.
func replicaTensor(rv jobfiles.Rendezvous, host string) int {
	for _, m := range rv.Models {
		if slices.Contains(m.Nodes, host) && m.Tensor > 0 {
			return m.Tensor
		}
	}
	return rv.Tensor
}
