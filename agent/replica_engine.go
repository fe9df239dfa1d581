package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llm-agent/llm-agent/agent/gateway"
	"github.com/llm-agent/llm-agent/agent/lifecycle"
	"github.com/llm-agent/llm-agent/agent/node"
	"github.com/llm-agent/llm-agent/healthcheck"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/supervisor"
	"github.com/llm-agent/llm-agent/vllm"
)

// A replica's engine on its node: supervised, probed, and behind a gateway of its own that
// only the head's gateway may use; and the quick watch that takes an engine that stops
// answering out of the rotation.

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

// replicaStage runs one replica of this node, in slot: the engine on its private socket,
// supervised and probed as the head's is, behind a gateway on the node's address that opens to
// the job's replica key only. Workers run one per slot; the head, its slots after the first.
func (a *agent) replicaStage(run context.Context, rv jobfiles.Rendezvous, port, slot int) lifecycle.Stage {
	var stop func()
	return lifecycle.Stage{Name: "replica " + a.replicaName(a.alloc.Hostname(), slot), Start: func(context.Context) (<-chan error, error) {
		ctx, cancel := context.WithCancel(run)
		r, err := a.newReplica(ctx, rv, port, slot)
		if err != nil {
			cancel()
			return nil, err
		}
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
		done, finished := lifecycle.Ended(errc, func(err error) error { return fmt.Errorf("replica %s: %w", r.name, err) })
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
	}, Stop: func() { stop() }}
}

// replica is one engine of a node and its gateway.
type replica struct {
	a *agent
	// run is what the replica's engine and probes live in: its stop ends them.
	run       context.Context
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

func (a *agent) newReplica(run context.Context, rv jobfiles.Rendezvous, port, slot int) (*replica, error) {
	key, err := readReplicaKey(a.stateDir)
	if err != nil {
		return nil, err
	}
	r := &replica{a: a, run: run, slot: slot, name: a.replicaName(a.alloc.Hostname(), slot), why: "starting",
		eng: vllm.Endpoint{Socket: filepath.Join(a.localDir, socketName(slot))}}
	if r.engineKey, err = gateway.GenerateKey(); err != nil {
		return nil, err
	}
	maxBody := a.cfg.MaxRequestBodyBytes()
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
		return nil, fmt.Errorf("%w: replica port %d: %w", node.ErrPort, port, err)
	}
	r.srv = &http.Server{Handler: r.gw.Handler(), ReadHeaderTimeout: readHeaderTimeout, IdleTimeout: 2 * time.Minute}
	opts, _, closeOut, err := a.engineOptions(engineChild{name: childName(slot), gpus: a.slotGPUs(slot),
		spec: vllm.ServeSpec{Model: a.engineModel(), ServedName: a.cfg.ServedName(), Socket: r.eng.Socket,
			Tensor: replicaTensor(rv, a.alloc.Hostname()), Pipeline: 1, Extra: a.cfg.VLLMArgs},
		env: []string{"VLLM_API_KEY=" + r.engineKey, "VLLM_HOST_IP=" + a.addr},
		onEvent: func(e supervisor.Event) {
			if e.State == supervisor.StateStarting && e.Restarts > 0 { // the head shows it with the replica
				if err := a.node.EngineRestarts(slot, e.Restarts); err != nil {
					a.log.Warn("cannot publish the engine's restarts", "error", err)
				}
			}
			r.follow(e)
		}})
	if err != nil {
		r.ln.Close()
		return nil, err
	}
	r.closeOut = closeOut
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
	ctx, cancel := context.WithCancel(r.run)
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
