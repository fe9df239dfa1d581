package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/gateway"
	"github.com/llm-agent/llm-agent/agent/node"
	"github.com/llm-agent/llm-agent/vllm"
)

// front is the head's public side: the gateway, or nothing in the plain topology, where vLLM
// holds the public port itself.
type front struct {
	gw      *gateway.Gateway
	keys    *gateway.Keys
	audit   *gateway.Audit
	metrics *gateway.Metrics
	// replicas exports the replicas' states, with --replicas.
	replicas *gateway.ReplicaCollector
	srv      *http.Server
	// stop ends the gateway's audit log and keys watcher; stopped is closed once both are done,
	// the audit log on disk.
	stop    context.CancelFunc
	stopped chan struct{}
}

// apiKeyFile is the file the job's key is read from: --api-key-file, else a service's own key
// for all its jobs; "" makes a key for the job.
func (h *head) apiKeyFile() string {
	if h.cfg.APIKeyFile == "" && h.cfg.KeysFile == "" && h.service != nil {
		return h.service.KeyFile()
	}
	return h.cfg.APIKeyFile
}

// setupKeys decides the engine's key and the clients' keys. With the gateway, the engine gets a
// fresh internal key that never leaves this node, and clients use the keys file or one key made
// for the job. Without it, the job's key goes to the engine itself.
func (h *head) setupKeys() error {
	a := h.agent
	if a.cfg.KeysFile == "" {
		var err error
		if h.apiKey, err = LoadAPIKey(h.apiKeyFile()); err != nil {
			return err
		}
	}
	if !a.cfg.Gateway {
		h.engineKey = h.apiKey
		return nil
	}
	var err error
	if h.engineKey, err = gateway.GenerateKey(); err != nil {
		return err
	}
	if a.loraJob.on() {
		if h.ownerKey, err = gateway.GenerateKey(); err != nil {
			return err
		}
	}
	var fixed *gateway.KeySet
	if h.apiKey != "" {
		if fixed, err = gateway.NewKeySet([]gateway.Key{{Name: "job", Key: h.apiKey}}); err != nil {
			return fmt.Errorf("%w: %w", config.ErrInvalid, err)
		}
	}
	keys, err := gateway.NewKeys(a.cfg.KeysFile, fixed, a.log.Named("gateway"))
	if err != nil {
		return fmt.Errorf("%w: %w", config.ErrInvalid, err)
	}
	h.front.keys = keys
	h.front.metrics = gateway.NewMetrics(a.alloc.Hostname(), a.alloc.JobID)
	if a.replicated() {
		h.front.replicas = gateway.NewReplicaCollector(a.alloc.Hostname(), a.alloc.JobID)
	}
	return nil
}

// engineEndpoint is where vLLM listens: a Unix socket in the node's private directory behind
// the gateway, so that only the job's user can reach it; the public port without the gateway.
func (h *head) engineEndpoint() vllm.Endpoint {
	if h.cfg.Gateway {
		return vllm.Endpoint{Socket: filepath.Join(h.localDir, vllm.SocketName)}
	}
	return vllm.Endpoint{Port: h.ports.API}
}

// startGateway binds the public port now, so that clients get answers (503 until ready) from
// the first second instead of refused connections, and serves until the head ends.
func (h *head) startGateway(ctx context.Context) (<-chan error, error) {
	a := h.agent
	if !a.cfg.Gateway {
		return nil, nil
	}
	maxBody := a.cfg.MaxRequestBodyBytes()
	var err error
	if h.front.audit, err = gateway.OpenAudit(filepath.Join(a.stateDir, gateway.AuditFile)); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", ":"+strconv.Itoa(h.ports.API))
	if err != nil {
		return nil, fmt.Errorf("%w: API port %d: %w", node.ErrPort, h.ports.API, err)
	}
	h.front.gw = gateway.New(gateway.Options{
		Engine:            h.engineEndpoint(),
		EngineKey:         h.engineKey,
		Keys:              h.front.keys,
		Ready:             h.answering.ready(a.state.Ready),
		Audit:             h.front.audit,
		Metrics:           h.front.metrics,
		MaxBody:           maxBody,
		MaxInFlightPerKey: a.cfg.MaxInFlightPerKey,
		MaxInFlight:       a.cfg.MaxInFlight,
		Priority:          a.priorityScheduling(),
		Name:              a.replicaName(a.alloc.Hostname(), 0),
		Model:             a.cfg.ServedName(),
		LoRA:              a.lora.on(),
		OwnerKey:          h.ownerKey,
		OnAdapter:         h.adapterChanged,
		Logger:            a.log.Named("gateway"),
	})
	if h.front.replicas != nil {
		h.front.replicas.Bind(h.front.gw)
	}
	h.front.srv = &http.Server{
		Handler:           h.front.gw.Handler(),
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       2 * time.Minute, // the request; responses of any length stream freely
		IdleTimeout:       2 * time.Minute,
	}
	errc := make(chan error, 1)
	go func() {
		if err := h.front.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
	h.startGatewayHelpers(ctx)
	a.log.Info("gateway listening", "port", h.ports.API, "engine", h.engineEndpoint().String())
	return errc, nil
}

// startGatewayHelpers runs the audit log's syncing and the keys file's watcher until the
// gateway stops.
func (h *head) startGatewayHelpers(ctx context.Context) {
	gctx, stop := context.WithCancel(ctx)
	h.front.stop, h.front.stopped = stop, make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := h.front.audit.Run(gctx, auditSyncInterval); err != nil {
			h.log.Error("audit log", "error", err)
		}
	}()
	go func() {
		defer wg.Done()
		h.front.keys.Watch(gctx, h.deps.Clock, keysCheckInterval)
	}()
	go func() {
		wg.Wait()
		close(h.front.stopped)
	}()
}

// drainGateway stops taking new requests and lets those in flight finish within budget.
func (h *head) drainGateway(run context.Context, budget time.Duration) {
	if h.front.gw == nil {
		return
	}
	ctx, cancel := context.WithTimeout(run, budget)
	defer cancel()
	if left := h.front.gw.Drain(ctx); left > 0 {
		h.log.Warn("drain budget over; cutting requests still in flight", "requests", left)
	}
}

// stopGateway closes the public port at the very end, then writes out the audit log.
func (h *head) stopGateway(run context.Context) {
	if h.front.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(run, gatewayCloseTimeout)
	defer cancel()
	h.front.srv.Shutdown(ctx)
	h.front.stop()
	<-h.front.stopped
}

// priorityScheduling tells whether every engine of the job schedules by priority, so that the
// gateway may add each key's priority to its requests.
func (a *agent) priorityScheduling() bool {
	if len(a.models) == 0 {
		return vllm.ReadSettings(a.cfg.VLLMArgs).SchedulingPolicy == "priority"
	}
	for _, p := range a.models {
		if vllm.ReadSettings(p.Config.VLLMArgs).SchedulingPolicy != "priority" {
			return false
		}
	}
	return true
}
