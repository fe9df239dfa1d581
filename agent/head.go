package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llm-agent/llm-agent/healthcheck"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/ray"
	"github.com/llm-agent/llm-agent/supervisor"
	"github.com/llm-agent/llm-agent/vllm"
)

// ErrRayIncomplete is returned when not every node joined Ray in time.
var ErrRayIncomplete = errors.New("ray cluster incomplete")

// rayHealthEnv makes the GCS notice a dead raylet within seconds instead of the default tens of
// seconds; values already in the environment win.
var rayHealthEnv = []string{"RAY_health_check_period_ms=1000", "RAY_health_check_failure_threshold=5"}

// head is the head node's run: Ray head, engine, probes and the connection file.
type head struct {
	*agent
	ports jobfiles.Ports
	// apiKey is the job's client key, written to the connection files; empty with a keys file.
	apiKey string
	// engineKey is the key vLLM requires: internal with the gateway, apiKey without.
	engineKey string
	front     front
	conn      *jobfiles.ConnectionWriter
	engine    *supervisor.Service
	rayc      ray.Client
	// engineOut is the engine's output, which keeps its first error line to explain an exit.
	engineOut *lineLogger

	draining  atomic.Bool
	everReady atomic.Bool

	mu          sync.Mutex
	clusterIDs  map[string]bool // Ray nodes alive when the engine last started
	clusterLost bool
	addresses   []string // node addresses by host index, from the node files
}

func (a *agent) runHead(ctx context.Context) error {
	h := &head{agent: a}
	var err error
	var moved []string
	if h.ports, moved, err = PickHeadPorts(a.cfg, a.alloc.JobID, a.deps.Ports); err != nil {
		return err
	}
	for _, m := range moved {
		a.log.Warn("preferred port busy, using another", "move", m)
	}
	if err := h.setupKeys(); err != nil {
		return err
	}
	serveCtx, stopServe := context.WithCancel(context.Background())
	defer stopServe()
	eng := h.engineEndpoint()
	extra := []prometheus.Collector{vllm.NewCollector(eng.BaseURL()+"/metrics", eng.Transport(1), "vllm:",
		a.alloc.Hostname(), a.alloc.JobID, 2*time.Second)}
	if h.front.metrics != nil {
		extra = append(extra, h.front.metrics)
	}
	metricsErr, err := a.serveMetrics(serveCtx, h.ports.Metrics, extra...)
	if err != nil {
		return err
	}
	gatewayErr, err := h.startGateway(serveCtx)
	if err != nil {
		return err
	}
	defer h.stopGateway()
	if err := jobfiles.WriteNodeInfo(a.stateDir, jobfiles.NodeInfo{Host: a.alloc.Hostname(), Address: a.addr, Role: "head",
		MetricsPort: h.ports.Metrics, GPUs: a.alloc.GPUs, PID: os.Getpid()}); err != nil {
		return err
	}
	if h.conn, err = jobfiles.NewConnectionWriter(a.stateDir, h.initialConnection(), h.apiKey); err != nil {
		return err
	}
	a.log.Info("head starting", "address", a.addr, "iface", a.ifname, "api_port", h.ports.API,
		"metrics_port", h.ports.Metrics, "tensor_parallel", a.par.Tensor, "pipeline_parallel", a.par.Pipeline,
		"state_dir", a.stateDir)

	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	go h.watchNodes(watchCtx)

	rayCtx, stopRay := context.WithCancel(context.Background())
	defer stopRay()
	var rayDone chan error // stays nil, never ready, with one node
	if a.multiNode() {
		rayDone = make(chan error, 1)
		if err := h.startRay(ctx, rayCtx, rayDone); err != nil {
			stopRay()
			if rayDone != nil {
				<-rayDone
			}
			if ctx.Err() != nil {
				return h.finish(nil)
			}
			return h.finish(err)
		}
		go h.monitorRay(watchCtx)
	}

	events := make(chan supervisor.Event, 64)
	var closeEngineOut func()
	if h.engine, closeEngineOut, err = h.engineService(events); err != nil {
		stopRay()
		if rayDone != nil {
			<-rayDone
		}
		return h.finish(err)
	}
	defer closeEngineOut()
	go h.monitorEngine(watchCtx, events)
	engineCtx, stopEngine := context.WithCancel(context.Background())
	defer stopEngine()
	engineDone := make(chan error, 1)
	go func() { engineDone <- h.engine.Run(engineCtx) }()

	var failure error
	select {
	case <-ctx.Done():
		a.log.Info("draining: engine first, then ray", "budget", a.cfg.Grace)
	case err := <-engineDone:
		failure = fmt.Errorf("engine: %w", err)
		if said := h.engineOut.FirstError(); said != "" {
			failure = fmt.Errorf("%w; the engine said: %s", failure, said)
		}
		engineDone <- nil
	case err := <-rayDone:
		failure = fmt.Errorf("ray head: %w", err)
		rayDone <- nil
	case err := <-metricsErr:
		failure = fmt.Errorf("metrics server: %w", err)
	case err := <-gatewayErr:
		failure = fmt.Errorf("gateway: %w", err)
	}
	h.draining.Store(true)
	if failure == nil {
		_ = h.conn.SetState(jobfiles.StateStopping, "received a stop signal")
	}
	a.state.SetReady(false, "stopping", time.Now())
	h.drainGateway(a.cfg.Grace / 4)
	stopEngine()
	<-engineDone
	stopWatch()
	stopRay()
	if rayDone != nil {
		<-rayDone
	}
	return h.finish(failure)
}

// finish marks the service stopped or failed and removes the Prometheus targets of the job.
func (h *head) finish(failure error) error {
	h.removeTargets()
	if failure != nil {
		h.log.Error("failed", "reason", failure)
		_ = h.conn.SetState(jobfiles.StateFailed, failure.Error())
		return failure
	}
	_ = h.conn.SetState(jobfiles.StateStopped, "")
	h.log.Info("stopped")
	return nil
}

func (h *head) initialConnection() jobfiles.Connection {
	a := h.agent
	userName := a.deps.Getenv("USER")
	if userName == "" {
		if u, err := user.Current(); err == nil {
			userName = u.Username
		}
	}
	login := a.cfg.LoginHost
	if login == "" {
		login = a.alloc.SubmitHost
	}
	hostPort := net.JoinHostPort(a.addr, strconv.Itoa(h.ports.API))
	c := jobfiles.Connection{
		JobID:            a.alloc.JobID,
		State:            jobfiles.StateStarting,
		HeadHost:         a.alloc.Head(),
		HeadAddress:      a.addr,
		Port:             h.ports.API,
		EnginePort:       h.engineEndpoint().Port,
		EngineSocket:     h.engineEndpoint().Socket,
		BaseURL:          "http://" + hostPort + "/v1",
		Model:            a.cfg.Model,
		ServedModelName:  a.cfg.ServedName(),
		TensorParallel:   a.par.Tensor,
		PipelineParallel: a.par.Pipeline,
		Nodes:            len(a.alloc.Nodes),
		GPUs:             a.alloc.TotalGPUs(),
		MetricsPort:      h.ports.Metrics,
		SSHTunnel:        jobfiles.SSHTunnelCommand(h.ports.API, a.alloc.Head(), userName, login),
		StartedAt:        a.started.UTC(),
		Restarts:         map[string]int{"vllm": 0},
		Gateway:          a.cfg.Gateway,
		KeysFile:         a.cfg.KeysFile,
	}
	if a.multiNode() {
		c.RayAddress = net.JoinHostPort(a.addr, strconv.Itoa(h.ports.RayGCS))
		// The dashboard listens on the head's loopback only: the owner tunnels to it and
		// presents the token.
		c.RayDashboardURL = "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(h.ports.Dashboard))
		c.RayDashboardTunnel = jobfiles.DashboardTunnelCommand(h.ports.Dashboard, a.alloc.Head(), userName, login)
		c.RayTokenFile = a.rayTokenPath()
		c.Restarts["ray"] = 0
	}
	if !a.alloc.EndTime.IsZero() {
		end := a.alloc.EndTime.UTC()
		c.JobEndTime = &end
	}
	return c
}

// startRay starts the supervised Ray head, waits until its GCS accepts connections, and then
// publishes the rendezvous so that workers join a head that is there.
func (h *head) startRay(ctx, rayCtx context.Context, rayDone chan error) error {
	a := h.agent
	python, err := ray.PythonFor(a.rayBin)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadInput, err)
	}
	gcs := net.JoinHostPort(a.addr, strconv.Itoa(h.ports.RayGCS))
	if err := WriteRayToken(a.stateDir); err != nil {
		return err
	}
	h.rayc = ray.Client{Python: python, GCSAddress: gcs, Timeout: 10 * time.Second, TokenFile: a.rayTokenPath()}
	opts := a.rayStartOptions(h.ports, "")
	svc, closeOut, err := a.rayService(opts, withDefaults(rayHealthEnv, a.deps.Getenv), func(e supervisor.Event) {
		a.trackChild(e)
		_ = h.conn.Update(func(c *jobfiles.Connection) { c.Restarts["ray"] = e.Restarts })
	})
	if err != nil {
		return err
	}
	go func() {
		defer closeOut()
		rayDone <- svc.Run(rayCtx)
	}()
	wctx, cancel := context.WithTimeout(ctx, a.cfg.RayTimeout)
	defer cancel()
	err = healthcheck.WaitReady(wctx, 200*time.Millisecond, func(ctx context.Context) error {
		select {
		case err := <-rayDone:
			rayDone <- err
			return fmt.Errorf("ray head ended: %w", err)
		default:
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", gcs)
		if err == nil {
			c.Close()
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("ray head GCS at %s did not come up: %w", gcs, err)
	}
	rv := jobfiles.Rendezvous{JobID: a.alloc.JobID, RestartCount: a.alloc.RestartCount, StepID: a.alloc.StepID,
		LaunchID: a.alloc.LaunchID, HeadHost: a.alloc.Head(), HeadAddress: a.addr, Ports: h.ports, CreatedAt: time.Now().UTC()}
	if err := jobfiles.WriteRendezvous(a.stateDir, rv); err != nil {
		return err
	}
	a.log.Info("ray head up; rendezvous published", "gcs", gcs)
	return nil
}

// withDefaults returns the entries of env whose variable getenv does not already set.
func withDefaults(env []string, getenv func(string) string) []string {
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if getenv(k) == "" {
			out = append(out, kv)
		}
	}
	return out
}

// engineService returns the supervised `vllm serve`, gated on a whole Ray cluster.
func (h *head) engineService(events chan<- supervisor.Event) (*supervisor.Service, func(), error) {
	a := h.agent
	out, closeOut, err := a.childOutput("vllm")
	if err != nil {
		return nil, nil, err
	}
	h.engineOut = out
	eng := h.engineEndpoint()
	spec := vllm.ServeSpec{Model: a.cfg.Model, ServedName: a.cfg.ServedName(), Host: "0.0.0.0", Port: eng.Port,
		Socket: eng.Socket, Tensor: a.par.Tensor, Pipeline: a.par.Pipeline, RayExecutor: h.engineOnRay(), Extra: a.cfg.VLLMArgs}
	env := append(os.Environ(), ray.Env(a.addr, a.ifname)...)
	env = append(env, "VLLM_API_KEY="+h.engineKey)
	if h.engineOnRay() {
		env = ray.WithAuth(append(env, "RAY_ADDRESS="+h.rayc.GCSAddress), a.rayTokenPath())
	}
	opts := supervisor.ServiceOptions{
		Name: "vllm",
		Command: func() (supervisor.Options, error) {
			if err := removeStaleSocket(spec.Socket); err != nil {
				return supervisor.Options{}, err
			}
			return supervisor.Options{Name: "vllm", Path: a.vllmBin, Args: vllm.ServeArgs(spec), Env: env,
				Stdout: out, Stderr: out, Grace: a.cfg.Grace / 4, Reaper: a.deps.Reaper}, nil
		},
		Policy: a.policy(),
		Logger: a.log.Named("supervisor").With("proc", "vllm"),
		OnEvent: func(e supervisor.Event) {
			if e.State == supervisor.StateStarting {
				out.NewRun()
			}
			a.trackChild(e)
			_ = h.conn.Update(func(c *jobfiles.Connection) { c.Restarts["vllm"] = e.Restarts })
			events <- e
		},
	}
	if a.multiNode() {
		opts.Before = h.waitCluster
	}
	return supervisor.NewService(opts), closeOut, nil
}

// engineOnRay tells whether the engine spans nodes, and so runs on Ray's executor. A model
// whose pipeline stays on the head uses vLLM's own processes there, even in a job of several
// nodes.
func (h *head) engineOnRay() bool {
	return h.multiNode() && h.par.Pipeline > 1
}

// monitorEngine follows the engine's life: it probes each new engine for readiness, then for
// liveness, and keeps the connection file's state in step.
func (h *head) monitorEngine(ctx context.Context, events <-chan supervisor.Event) {
	var stopProbe context.CancelFunc
	stop := func() {
		if stopProbe != nil {
			stopProbe()
			stopProbe = nil
		}
	}
	defer stop()
	for {
		var e supervisor.Event
		select {
		case <-ctx.Done():
			return
		case e = <-events:
		}
		switch e.State {
		case supervisor.StateRunning:
			stop()
			pctx, cancel := context.WithCancel(ctx)
			stopProbe = cancel
			go h.probeEngine(pctx)
		case supervisor.StateBackoff, supervisor.StateStopping:
			stop()
			if !h.draining.Load() {
				h.setNotReady("engine " + string(e.State) + ": " + h.withEngineError(e.Reason))
			}
		case supervisor.StateFailed, supervisor.StateStopped:
			stop()
		}
	}
}

func (h *head) engineProbe() vllm.Probe {
	eng := h.engineEndpoint()
	return vllm.Probe{BaseURL: eng.BaseURL(), APIKey: h.engineKey, Client: &http.Client{Transport: eng.Transport(2)}}
}

// removeStaleSocket removes the socket an earlier engine left, which would make the next one's
// bind fail. It lives in the agent's private directory, so nothing else can be there.
func removeStaleSocket(path string) error {
	if path == "" {
		return nil
	}
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("engine socket %s: not a socket left by an earlier engine (%v)", path, err)
	}
	return os.Remove(path)
}

// probeEngine waits for the engine that just started to become ready, then watches its
// liveness, until ctx ends.
func (h *head) probeEngine(ctx context.Context) {
	a := h.agent
	eng := h.engineProbe()
	served := a.cfg.ServedName()
	rctx, cancel := context.WithTimeout(ctx, a.cfg.EngineTimeout)
	err := healthcheck.WaitReady(rctx, 500*time.Millisecond, func(ctx context.Context) error {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return eng.Ready(pctx, served)
	})
	cancel()
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		h.engine.Restart("start_timeout", fmt.Sprintf("engine not ready within %s: %v", a.cfg.EngineTimeout, err))
		return
	}
	h.everReady.Store(true)
	a.state.SetReady(true, "", time.Now())
	_ = h.conn.SetState(jobfiles.StateReady, "")
	a.log.Info("engine ready", "url", h.conn.Snapshot().BaseURL, "since_start", time.Since(a.started).Round(time.Millisecond))
	healthcheck.Liveness{
		Probe:    eng.Health,
		Interval: a.cfg.ProbeInterval,
		Timeout:  a.cfg.ProbeTimeout,
		Failures: a.cfg.ProbeFailures,
		OnUnhealthy: func(err error) {
			a.log.Warn("engine unhealthy, restarting", "reason", err)
			h.engine.Restart("unhealthy", err.Error())
		},
	}.Run(ctx)
}

// withEngineError adds the engine's last error line to the reason an engine exited.
func (h *head) withEngineError(reason string) string {
	if strings.HasPrefix(reason, "exit status") {
		if said := h.engineOut.FirstError(); said != "" {
			return reason + "; the engine said: " + said
		}
	}
	return reason
}

func (h *head) setNotReady(reason string) {
	h.state.SetReady(false, reason, time.Now())
	state := jobfiles.StateStarting
	if h.everReady.Load() {
		state = jobfiles.StateRestarting
	}
	_ = h.conn.SetState(state, reason)
}

// expected returns the job's hosts and, where known, their addresses.
func (h *head) expected() ([]string, []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.alloc.Nodes, append([]string(nil), h.addresses...)
}

// waitCluster blocks until exactly one live Ray node runs on every host of the job, then
// remembers those nodes: losing one of them later restarts the engine.
func (h *head) waitCluster(ctx context.Context) error {
	a := h.agent
	wctx, cancel := context.WithTimeout(ctx, a.cfg.RayTimeout)
	defer cancel()
	want := len(a.alloc.Nodes)
	var missing []string
	err := healthcheck.WaitReady(wctx, time.Second, func(ctx context.Context) error {
		nodes, err := h.rayc.Nodes(ctx)
		if err != nil {
			missing = a.alloc.Nodes[1:]
			return err
		}
		hosts, addrs := h.expected()
		alive := ray.Alive(nodes)
		missing = ray.Missing(nodes, hosts, addrs)
		a.state.SetRayNodes(len(alive), want)
		if len(missing) > 0 || len(alive) != want {
			return fmt.Errorf("%d of %d ray nodes alive", len(alive), want)
		}
		ids := map[string]bool{}
		for _, n := range alive {
			ids[n.ID] = true
		}
		h.mu.Lock()
		h.clusterIDs, h.clusterLost = ids, false
		h.mu.Unlock()
		return nil
	})
	if err == nil {
		a.log.Info("ray cluster complete", "nodes", want)
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("%w: not every node joined within %s; nodes that never joined: %s (%v); see their logs in %s",
		ErrRayIncomplete, a.cfg.RayTimeout, strings.Join(missing, ", "), err, filepath.Join(a.stateDir, "logs"))
}

// monitorRay polls the GCS and restarts the engine, when it runs on Ray, once a node it was
// started on is gone.
func (h *head) monitorRay(ctx context.Context) {
	a := h.agent
	tick := time.NewTicker(a.cfg.RayPollInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		nodes, err := h.rayc.Nodes(ctx)
		if ctx.Err() != nil {
			return
		}
		alive := map[string]bool{}
		if err != nil {
			a.log.Debug("ray node poll failed", "error", err)
		}
		for _, n := range ray.Alive(nodes) {
			alive[n.ID] = true
		}
		a.state.SetRayNodes(len(alive), len(a.alloc.Nodes))
		h.mu.Lock()
		var gone []string
		if h.clusterIDs != nil && !h.clusterLost {
			for id := range h.clusterIDs {
				if !alive[id] {
					gone = append(gone, id[:min(12, len(id))])
				}
			}
			h.clusterLost = len(gone) > 0
		}
		h.mu.Unlock()
		if len(gone) > 0 && !h.draining.Load() && h.engineOnRay() {
			reason := fmt.Sprintf("ray lost node(s) %s; the engine restarts once every node is back", strings.Join(gone, ", "))
			a.log.Warn("ray cluster lost a node", "nodes", gone)
			h.engine.Restart("ray_node_lost", reason)
		}
	}
}

// watchNodes reads the nodes' published info until every node is in, keeping the connection
// file's metrics list and the Prometheus targets current.
func (h *head) watchNodes(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	seen := -1
	for {
		infos := jobfiles.ReadNodeInfos(h.stateDir, h.alloc.Nodes)
		if len(infos) != seen {
			seen = len(infos)
			h.publishNodes(infos)
		}
		if seen == len(h.alloc.Nodes) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (h *head) publishNodes(infos []jobfiles.NodeInfo) {
	addrs := make([]string, len(h.alloc.Nodes))
	var eps []jobfiles.NodeEndpoint
	for _, n := range infos {
		for i, host := range h.alloc.Nodes {
			if host == n.Host {
				addrs[i] = n.Address
			}
		}
		eps = append(eps, jobfiles.NodeEndpoint{Node: n.Host, Role: n.Role, MetricsURL: n.MetricsURL()})
	}
	h.mu.Lock()
	h.addresses = addrs
	h.mu.Unlock()
	_ = h.conn.Update(func(c *jobfiles.Connection) { c.Metrics = eps })
	if err := h.writeTargets(infos); err != nil {
		h.log.Warn("cannot write prometheus targets", "error", err)
	}
}
