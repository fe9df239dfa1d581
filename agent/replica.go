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

// replicated tells whether the job runs several replicas of the engine, one per node.
func (a *agent) replicated() bool { return a.cfg.Replicas > 1 }

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
		Tensor: h.par.Tensor, Pipeline: 1, Replicas: a.cfg.Replicas, Models: modelPlacements(a.models, a.tensors)}
	if err := jobfiles.WriteRendezvous(a.stateDir, rv); err != nil {
		return err
	}
	a.log.Info("rendezvous published; one replica of the engine per node, no Ray", "replicas", a.cfg.Replicas)
	return nil
}

// watchReplicas keeps the gateway's list of the other nodes' replicas from their node files,
// and takes each out of the rotation, or back in, as its /readyz says.
func (h *head) watchReplicas(ctx context.Context) {
	a := h.agent
	hosts := a.alloc.Nodes[1:min(len(a.alloc.Nodes), a.cfg.Replicas)]
	var known []jobfiles.NodeInfo // the node files the pool was last built from
	for {
		infos := jobfiles.ReadNodeInfos(a.stateDir, hosts)
		if !slices.EqualFunc(infos, known, sameReplica) {
			known = infos
			var reps []*gateway.Replica
			for _, n := range infos {
				if n.ReplicaPort > 0 {
					ep := vllm.Endpoint{Host: n.Address, Port: n.ReplicaPort}
					r := gateway.NewReplica(n.Host, ep, h.replicaKey)
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
	return a.Host == b.Host && a.Address == b.Address && a.ReplicaPort == b.ReplicaPort
}

// publishReplicaStates writes every replica's state to the connection file: the workers'
// engine restarts come from their node files.
func (h *head) publishReplicaStates(infos []jobfiles.NodeInfo) {
	restarts := map[string]int{h.alloc.Hostname(): h.conn.Snapshot().Restarts["vllm"]}
	for _, n := range infos {
		restarts[n.Host] = n.EngineRestarts
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

// workerReplicaStage runs this node's replica: the engine on its private socket, supervised and
// probed as the head's is, behind a gateway on the node's address that opens to the job's
// replica key only.
func (a *agent) workerReplicaStage(run context.Context, rv jobfiles.Rendezvous, port int) stage {
	var stop func()
	return stage{name: "replica", start: func(context.Context) (<-chan error, error) {
		r, err := a.newReplica(rv, port)
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
		done, finished := ended(errc, func(err error) error { return fmt.Errorf("replica on %s: %w", a.alloc.Hostname(), err) })
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

// replica is a worker's engine and its gateway.
type replica struct {
	a         *agent
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
}

func (a *agent) newReplica(rv jobfiles.Rendezvous, port int) (*replica, error) {
	key, err := readReplicaKey(a.stateDir)
	if err != nil {
		return nil, err
	}
	r := &replica{a: a, eng: vllm.Endpoint{Socket: filepath.Join(a.localDir, vllm.SocketName)}}
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
	r.gw = gateway.New(gateway.Options{Engine: r.eng, EngineKey: r.engineKey, Keys: keys, Ready: r.answering.ready(a.state.Ready),
		MaxBody: maxBody, LoRA: a.lora.on(), OwnerKey: key, OnAdapter: a.lora.changed, Name: a.alloc.Hostname(), Logger: a.log.Named("gateway")})
	if r.ln, err = net.Listen("tcp", net.JoinHostPort(a.addr, strconv.Itoa(port))); err != nil {
		return nil, fmt.Errorf("%w: replica port %d: %w", ErrPort, port, err)
	}
	r.srv = &http.Server{Handler: r.gw.Handler(), ReadHeaderTimeout: readHeaderTimeout, IdleTimeout: 2 * time.Minute}
	out, closeOut, err := a.childOutput("vllm")
	if err != nil {
		r.ln.Close()
		return nil, err
	}
	r.closeOut = closeOut
	spec := vllm.ServeSpec{Model: a.cfg.Model, ServedName: a.cfg.ServedName(), Socket: r.eng.Socket, Tensor: replicaTensor(rv, a.alloc.Hostname()), Pipeline: 1,
		Extra: a.cfg.VLLMArgs}
	env := append(os.Environ(), "VLLM_API_KEY="+r.engineKey, "VLLM_HOST_IP="+a.addr)
	if a.lora.on() {
		env = append(env, vllm.RuntimeLoRAEnv)
	}
	opts := a.serviceOptions("vllm")
	opts.Command = func() (supervisor.Options, error) {
		if err := removeStaleSocket(spec.Socket); err != nil {
			return supervisor.Options{}, err
		}
		return supervisor.Options{Name: "vllm", Path: a.vllmBin, Args: vllm.ServeArgs(a.lora.spec(spec)), Env: env,
			Stdout: out, Stderr: out, Grace: a.cfg.Grace / 4, Reaper: a.deps.Reaper}, nil
	}
	opts.OnEvent = func(e supervisor.Event) {
		if e.State == supervisor.StateStarting {
			out.NewRun()
			if e.Restarts > 0 { // the head shows it with the replica
				if err := jobfiles.WriteEngineRestarts(a.stateDir, a.alloc.Hostname(), e.Restarts); err != nil {
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
	a := r.a
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopProbe != nil {
		r.stopProbe()
		r.stopProbe = nil
	}
	if e.State != supervisor.StateRunning {
		a.state.SetReady(false, "engine "+string(e.State), time.Now())
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
		a.state.SetReady(true, "", time.Now())
		a.log.Info("replica ready", "since_start", time.Since(a.started).Round(time.Millisecond))
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
