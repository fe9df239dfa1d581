// Package replica is one whole replica of the engine on its node, in a job with --replicas:
// the engine on its private socket, supervised and probed as the head's is, behind a gateway
// on the node's address that opens to the job's replica key only. Workers run one per slot;
// the head, its slots after the first. The head's gateway keeps the rotation over them.
package replica

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/llm-agent/llm-agent/agent/engine"
	"github.com/llm-agent/llm-agent/agent/gateway"
	"github.com/llm-agent/llm-agent/agent/lifecycle"
	"github.com/llm-agent/llm-agent/agent/node"
	"github.com/llm-agent/llm-agent/agent/secrets"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/supervisor"
	"github.com/llm-agent/llm-agent/vllm"
)

// Timings of a replica's gateway that are not the user's settings.
const (
	readHeaderTimeout = 10 * time.Second // the head's request headers
	closeTimeout      = time.Second      // closing the replica's port at the end
)

// Stage runs the replica of this node in slot, its gateway on port; rv is the head's
// rendezvous.
func Stage(run context.Context, e *node.Env, rv jobfiles.Rendezvous, port, slot int) lifecycle.Stage {
	var stop func()
	return lifecycle.Stage{Name: "replica " + e.ReplicaName(e.Alloc.Hostname(), slot), Start: func(context.Context) (<-chan error, error) {
		ctx, cancel := context.WithCancel(run)
		r, err := newReplica(ctx, e, rv, port, slot)
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
			dctx, dcancel := context.WithTimeout(run, e.Cfg.Grace/2)
			r.gw.Drain(dctx)
			dcancel()
			cancel()
			<-finished
			sctx, scancel := context.WithTimeout(context.Background(), closeTimeout)
			r.srv.Shutdown(sctx)
			scancel()
		}
		return done, nil
	}, Stop: func() { stop() }}
}

// replica is one engine of a node and its gateway.
type replica struct {
	env *node.Env
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
	answering engine.Answering

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
	if r.slot == 0 && !r.env.Alloc.IsHead() {
		r.env.State.SetReady(ok, why, time.Now())
	}
}

func newReplica(run context.Context, e *node.Env, rv jobfiles.Rendezvous, port, slot int) (*replica, error) {
	key, err := secrets.ReadReplicaKey(e.StateDir)
	if err != nil {
		return nil, err
	}
	r := &replica{env: e, run: run, slot: slot, name: e.ReplicaName(e.Alloc.Hostname(), slot), why: "starting",
		eng: vllm.Endpoint{Socket: e.SocketPath(slot)}}
	if r.engineKey, err = gateway.GenerateKey(); err != nil {
		return nil, err
	}
	if r.gw, err = r.gateway(key); err != nil {
		return nil, err
	}
	if r.ln, err = net.Listen("tcp", net.JoinHostPort(e.Addr, strconv.Itoa(port))); err != nil {
		return nil, fmt.Errorf("%w: replica port %d: %w", node.ErrPort, port, err)
	}
	r.srv = &http.Server{Handler: r.gw.Handler(), ReadHeaderTimeout: readHeaderTimeout, IdleTimeout: 2 * time.Minute}
	opts, _, closeOut, err := engine.Options(e, engine.Child{Name: node.ChildName(slot), GPUs: e.SlotGPUs(slot),
		Spec: vllm.ServeSpec{Model: e.EngineModel(), ServedName: e.Cfg.ServedName(), Socket: r.eng.Socket,
			Tensor: tensorOf(rv, e.Alloc.Hostname()), Pipeline: 1, Extra: e.Cfg.VLLMArgs},
		Env: []string{"VLLM_API_KEY=" + r.engineKey, "VLLM_HOST_IP=" + e.Addr},
		OnEvent: func(ev supervisor.Event) {
			if ev.State == supervisor.StateStarting && ev.Restarts > 0 { // the head shows it with the replica
				if err := e.File.EngineRestarts(slot, ev.Restarts); err != nil {
					e.Log.Warn("cannot publish the engine's restarts", "error", err)
				}
			}
			r.follow(ev)
		}})
	if err != nil {
		r.ln.Close()
		return nil, err
	}
	r.closeOut = closeOut
	r.svc = supervisor.NewService(opts)
	return r, nil
}

// gateway is the replica's own: the head's gateway has already checked the client's key,
// limits and model access; this one admits the head alone, with the job's replica key, and
// keeps no audit of its own.
func (r *replica) gateway(key string) (*gateway.Gateway, error) {
	e := r.env
	fixed, err := gateway.NewKeySet([]gateway.Key{{Name: "head", Key: key}})
	if err != nil {
		return nil, err
	}
	keys, err := gateway.NewKeys("", fixed, e.Log.Named("gateway"))
	if err != nil {
		return nil, err
	}
	return gateway.New(gateway.Options{Engine: r.eng, EngineKey: r.engineKey, Keys: keys, Ready: r.answering.Ready(r.readiness),
		MaxBody: e.Cfg.MaxRequestBodyBytes(), LoRA: e.LoRA.On(), OwnerKey: key, OnAdapter: e.LoRA.Changed, Name: r.name,
		Logger: e.Log.Named("gateway")}), nil
}

// follow probes each new engine until it is ready, then for liveness; the replica's gateway
// answers ready only in between.
func (r *replica) follow(ev supervisor.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopProbe != nil {
		r.stopProbe()
		r.stopProbe = nil
	}
	if ev.State != supervisor.StateRunning {
		r.setReady(false, "engine "+string(ev.State))
		return
	}
	ctx, cancel := context.WithCancel(r.run)
	r.stopProbe = cancel
	go r.probe(ctx)
}

func (r *replica) probe(ctx context.Context) {
	e := r.env
	eng := vllm.Probe{BaseURL: r.eng.BaseURL(), APIKey: r.engineKey, Client: &http.Client{Transport: r.eng.Transport(3)}}
	r.answering.Follow(ctx, e, eng, r.gw.Activity)
	engine.Follow(ctx, e, eng, r.svc, r.gw.Activity, func() {
		r.mu.Lock()
		r.setReady(true, "")
		r.mu.Unlock()
		e.Log.Info("replica ready", "replica", r.name, "since_start", time.Since(e.Started).Round(time.Millisecond))
	})
}

// tensorOf is the GPUs of a host's replica: its model's, in a job that serves several.
func tensorOf(rv jobfiles.Rendezvous, host string) int {
	for _, m := range rv.Models {
		if slices.Contains(m.Nodes, host) && m.Tensor > 0 {
			return m.Tensor
		}
	}
	return rv.Tensor
}
