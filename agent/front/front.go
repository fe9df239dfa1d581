// Package front is the head's public side: the job's keys, and the gateway on the API port
// with its audit log, keys watcher and metrics; or nothing in the plain topology
// (--gateway=false), where vLLM holds the public port itself with the job's key.
package front

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

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/gateway"
	"github.com/llm-agent/llm-agent/agent/lifecycle"
	"github.com/llm-agent/llm-agent/agent/node"
	"github.com/llm-agent/llm-agent/agent/secrets"
	"github.com/llm-agent/llm-agent/agent/status"
	"github.com/llm-agent/llm-agent/agent/webui"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/vllm"
)

// Timings of the public port that are not the user's settings.
const (
	auditSyncInterval = time.Second      // the audit log reaching the disk
	keysCheckInterval = 2 * time.Second  // the keys file changing
	readHeaderTimeout = 10 * time.Second // a client's request headers
	closeTimeout      = time.Second      // closing the public port at the end
)

// jobKeyName names the job's own key, its owner's, in the audit log and metrics.
const jobKeyName = "job"

// Front is the head's public side.
type Front struct {
	env *node.Env
	// APIKey is the job's client key, written to the connection files; empty with a keys file.
	APIKey string
	// EngineKey is the key vLLM requires: internal with the gateway, APIKey without.
	EngineKey string
	// OwnerKey opens the gateway's routes for the job's owner (adapters at run time); it is
	// made when the engine serves LoRA behind the gateway, and written to a 0600 file only.
	OwnerKey string

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

// Keys are where the clients' keys come from: one key's file (made for the job when empty), or
// a keys file.
type Keys struct {
	File, KeysFile string
}

// New decides the engine's key and the clients' keys. With the gateway, the engine gets a fresh
// internal key that never leaves this node, and clients use the keys file or the job's key.
// Without it, the job's key goes to the engine itself.
func New(e *node.Env, k Keys) (*Front, error) {
	f := &Front{env: e}
	var err error
	keyFile := k.File
	if k.KeysFile == "" {
		if f.APIKey, err = secrets.LoadAPIKey(keyFile); err != nil {
			return nil, err
		}
	}
	if !e.Cfg.Gateway {
		f.EngineKey = f.APIKey
		return f, nil
	}
	if f.EngineKey, err = gateway.GenerateKey(); err != nil {
		return nil, err
	}
	if e.LoRAJob.On() {
		if f.OwnerKey, err = gateway.GenerateKey(); err != nil {
			return nil, err
		}
	}
	var fixed *gateway.KeySet
	if f.APIKey != "" {
		if fixed, err = gateway.NewKeySet([]gateway.Key{{Name: jobKeyName, Key: f.APIKey}}); err != nil {
			return nil, fmt.Errorf("%w: %w", config.ErrInvalid, err)
		}
	}
	if f.keys, err = gateway.NewKeys(k.KeysFile, fixed, e.Log.Named("gateway")); err != nil {
		return nil, fmt.Errorf("%w: %w", config.ErrInvalid, err)
	}
	f.metrics = gateway.NewMetrics(e.Alloc.Hostname(), e.Alloc.JobID)
	if e.Replicated() || (e.Cfg.MaxJobs > 1 && e.Cfg.ExtraOf == "") { // replicas, or a service's added jobs
		f.replicas = gateway.NewReplicaCollector(e.Alloc.Hostname(), e.Alloc.JobID)
	}
	return f, nil
}

// Collectors are the gateway's metrics, for the head's metrics port.
func (f *Front) Collectors() []prometheus.Collector {
	var cs []prometheus.Collector
	if f.metrics != nil {
		cs = append(cs, f.metrics)
	}
	if f.replicas != nil {
		cs = append(cs, f.replicas)
	}
	return cs
}

// Gateway is the running gateway; nil in the plain topology or before its stage started.
func (f *Front) Gateway() *gateway.Gateway { return f.gw }

// Options are what the gateway serves in front of.
type Options struct {
	// Port is the job's public API port.
	Port   int
	Engine vllm.Endpoint
	// Ready tells whether the service is ready, and why not.
	Ready func() (bool, string)
	// OnAdapter hears of each adapter the engine loaded (path set) or unloaded at the owner's
	// request.
	OnAdapter func(name, path string)
	// ServiceDir is the service's folder, for the web page's list of its jobs; empty for a job
	// alone.
	ServiceDir string
}

// Stage binds the public port; it closes the port and writes out the audit log last.
func (f *Front) Stage(run context.Context, o Options) lifecycle.Stage {
	return lifecycle.Stage{Name: "gateway", Start: func(context.Context) (<-chan error, error) {
		errc, err := f.start(run, o)
		if err != nil || errc == nil {
			return nil, err
		}
		done, _ := lifecycle.Ended(errc, func(err error) error { return fmt.Errorf("gateway: %w", err) })
		return done, nil
	}, Stop: func() { f.close(run) }}
}

// DrainStage, last to start and first to stop, lets the requests in flight finish within a
// quarter of the grace before the engine stops.
func (f *Front) DrainStage(run context.Context) lifecycle.Stage {
	return lifecycle.Stage{Name: "drain", Start: func(context.Context) (<-chan error, error) { return nil, nil },
		Stop: func() { f.drain(run, f.env.Cfg.Grace/4) }}
}

// start binds the public port now, so that clients get answers (503 until ready) from the
// first second instead of refused connections, and serves until the head ends.
func (f *Front) start(ctx context.Context, o Options) (<-chan error, error) {
	e := f.env
	if !e.Cfg.Gateway {
		return nil, nil
	}
	var err error
	if f.audit, err = gateway.OpenAudit(filepath.Join(e.StateDir, gateway.AuditFile)); err != nil {
		return nil, err
	}
	f.metrics.BindAudit(f.audit)
	ln, err := net.Listen("tcp", ":"+strconv.Itoa(o.Port))
	if err != nil {
		return nil, fmt.Errorf("%w: API port %d: %w", node.ErrPort, o.Port, err)
	}
	f.gw = gateway.New(gateway.Options{Engine: o.Engine, EngineKey: f.EngineKey, Keys: f.keys, Ready: o.Ready,
		Audit: f.audit, Metrics: f.metrics, MaxBody: e.Cfg.MaxRequestBodyBytes(),
		MaxInFlightPerKey: e.Cfg.MaxInFlightPerKey, MaxInFlight: e.Cfg.MaxInFlight, Priority: e.PriorityScheduling(),
		Name: e.ReplicaName(e.Alloc.Hostname(), 0), Model: e.Cfg.ServedName(), LoRA: e.LoRA.On(),
		OwnerKey: f.OwnerKey, OnAdapter: o.OnAdapter, Logger: e.Log.Named("gateway")})
	if f.replicas != nil {
		f.replicas.Bind(f.gw)
	}
	f.srv = &http.Server{
		Handler:           f.handler(o),
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       2 * time.Minute, // the request; responses of any length stream freely
		IdleTimeout:       2 * time.Minute,
	}
	errc := make(chan error, 1)
	go func() {
		if err := f.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
	f.startHelpers(ctx)
	e.Log.Info("gateway listening", "port", o.Port, "engine", o.Engine.String())
	return errc, nil
}

// startHelpers runs the audit log's syncing and the keys file's watcher until the gateway
// stops.
func (f *Front) startHelpers(ctx context.Context) {
	gctx, stop := context.WithCancel(ctx)
	f.stop, f.stopped = stop, make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := f.audit.Run(gctx, auditSyncInterval); err != nil {
			f.env.Log.Error("audit log", "error", err)
		}
	})
	wg.Go(func() { f.keys.Watch(gctx, f.env.Clock, keysCheckInterval) })
	go func() {
		wg.Wait()
		close(f.stopped)
	}()
}

// drain stops taking new requests and lets those in flight finish within budget.
func (f *Front) drain(run context.Context, budget time.Duration) {
	if f.gw == nil {
		return
	}
	ctx, cancel := context.WithTimeout(run, budget)
	defer cancel()
	if left := f.gw.Drain(ctx); left > 0 {
		f.env.Log.Warn("drain budget over; cutting requests still in flight", "requests", left)
	}
}

// close closes the public port at the very end, then writes out the audit log.
func (f *Front) close(run context.Context) {
	if f.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(run, closeTimeout)
	defer cancel()
	f.srv.Shutdown(ctx)
	f.stop()
	<-f.stopped
}

// uiStatusMaxAge is how long the web page's status is kept for the next page that asks.
const uiStatusMaxAge = 2 * time.Second

// handler is the gateway's, with the web page under /ui/ unless --ui=false.
func (f *Front) handler(o Options) http.Handler {
	e := f.env
	if !e.Cfg.UI {
		return f.gw.Handler()
	}
	conn := filepath.Join(e.StateDir, jobfiles.ConnectionFile)
	src := &webui.Source{ConnectionFile: conn, Client: &http.Client{Timeout: 3 * time.Second}, Idle: f.gw.Idle,
		IdleRelease: e.Cfg.IdleRelease, Handover: e.Cfg.Handover, Service: e.Cfg.Service, ServiceDir: o.ServiceDir,
		MaxAge: uiStatusMaxAge}
	gw := f.gw.Handler()
	usage := status.NewLiveUsage(conn, e.Cfg.SUFactor)
	page := webui.New(webui.Options{Gateway: gw, Keys: f.keys, Status: src.Read,
		Usage:          func() (gateway.UsageReport, error) { return usage.Report(time.Now()) },
		Owner:          func(k gateway.Key) bool { return f.APIKey != "" && k.Name == jobKeyName },
		FrameAncestors: e.Cfg.FrameAncestors(), Logger: e.Log.Named("webui")})
	return page.Mount(gw)
}
