package agent

import (
	"context"
	"net"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llm-agent/llm-agent/agent/internal/linelog"
	"github.com/llm-agent/llm-agent/agent/layout"
	"github.com/llm-agent/llm-agent/agent/lifecycle"
	"github.com/llm-agent/llm-agent/agent/node"
	"github.com/llm-agent/llm-agent/agent/raycluster"
	"github.com/llm-agent/llm-agent/agent/service"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/ray"
	"github.com/llm-agent/llm-agent/supervisor"
	"github.com/llm-agent/llm-agent/vllm"
)

// ErrRayIncomplete is returned when not every node joined Ray, or published its file, in time.
var ErrRayIncomplete = raycluster.ErrIncomplete

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
	// ownerKey opens the gateway's routes for the job's owner (adapters at run time); it is
	// made when the engine serves LoRA behind the gateway, and written to a 0600 file only.
	ownerKey string
	// replicaKey opens the workers' replica gateways to this one, with --replicas.
	replicaKey string
	// slotPorts are the ports of the head's own replica gateways when each node runs several
	// replicas (the first, 0, is the head's own engine behind its gateway).
	slotPorts []int
	front     front
	conn      *jobfiles.ConnectionWriter
	engine    *supervisor.Service
	// answering takes the head's own engine out of the rotation while it does not answer,
	// in a job with replicas.
	answering answering
	rayc      ray.Client
	ray       *raycluster.Cluster // the cluster as the GCS shows it, once Ray is up
	// engineOut is the engine's output, which keeps its first error line to explain an exit.
	engineOut *linelog.Logger

	// service is the job's service, with --service.
	service *service.Service
	// stopReason says why the head stops by itself (a handover, the service's end).
	stopReason atomic.Pointer[string]

	draining atomic.Bool
	// generation counts the starts of the engine's rank 0 with --launcher mp (engine.json);
	// running is the generation of the rank 0 that runs now, 0 while none does.
	generation, running atomic.Int64

	mu        sync.Mutex
	addresses []string // node addresses by host index, from the node files
}

// runHead is the head's run: its stages in order, from the metrics port to the drain.
func (a *agent) runHead(ctx context.Context) error {
	h := &head{agent: a}
	var err error
	var moved []string
	if h.ports, moved, err = node.PickHeadPorts(a.cfg, a.alloc.JobID, a.deps.Ports); err != nil {
		return err
	}
	for _, m := range moved {
		a.log.Warn("preferred port busy, using another", "move", m)
	}
	if err := h.joinService(ctx); err != nil {
		return err
	}
	if err := h.setupKeys(); err != nil {
		return err
	}
	if a.perNode() > 1 {
		// The head's further replicas, each behind a gateway of its own as on the workers.
		if h.slotPorts, err = node.PickReplicaPorts(a.cfg, a.alloc.JobID, a.deps.Ports, a.perNode(), true, h.ports.API, h.ports.Metrics); err != nil {
			return err
		}
	}
	run := lifecycle.Life(ctx)
	stages := []lifecycle.Stage{
		a.metricsStage(run, h.ports.Metrics, h.metricsServed()),
		h.gatewayStage(run),
		h.filesStage(),
		h.watchStage(run, "node files", h.watchNodes),
		h.clusterStage(run),
		h.modelStage(),
		h.engineStage(run),
	}
	if a.replicated() {
		for slot := 1; slot < a.perNode(); slot++ {
			rv := jobfiles.Rendezvous{Tensor: a.par.Tensor}
			stages = append(stages, a.replicaStage(run, rv, h.slotPorts[slot], slot))
		}
		stages = append(stages, h.watchStage(run, "replicas", h.watchReplicas))
	}
	failure := lifecycle.Run(ctx, append(stages, h.serviceStage(run), h.drainStage(run)), h.beginDrain)
	return h.finish(failure)
}

// beginDrain marks the service as stopping, or failing, before the stages stop. A stop signal
// may come from Slurm ending the step because a worker's agent ended: the worker's reason, or
// its silence, is then the failure.
func (h *head) beginDrain(failure error) error {
	h.draining.Store(true)
	if failure == nil && h.conn != nil && h.multiNode() {
		failure = h.workerFailure()
	}
	if failure == nil && h.conn != nil {
		h.log.Info("draining: engine first, then ray", "budget", h.cfg.Grace, "why", h.why())
		_ = h.conn.SetState(jobfiles.StateStopping, h.why())
	}
	h.state.SetReady(false, "stopping", time.Now())
	return failure
}

// finish marks the service stopped or failed and removes the Prometheus targets of the job. A
// failure before the connection file exists is only returned.
func (h *head) finish(failure error) error {
	if h.conn == nil {
		return failure
	}
	h.removeTargets()
	if failure != nil {
		h.log.Error("failed", "reason", failure)
		_ = h.conn.SetState(jobfiles.StateFailed, failure.Error())
		h.endService("failed: " + failure.Error())
		return failure
	}
	_ = h.conn.SetState(jobfiles.StateStopped, h.ownReason())
	h.endService(h.why())
	h.log.Info("stopped", "why", h.why())
	return nil
}

// ownReason says why the head stops by itself; "" when it was asked to.
func (h *head) ownReason() string {
	if r := h.stopReason.Load(); r != nil {
		return *r
	}
	return ""
}

// why says why the head stops: its own reason, or a stop signal.
func (h *head) why() string {
	if r := h.ownReason(); r != "" {
		return r
	}
	return "received a stop signal"
}

// endService writes the job's end into its service's file.
func (h *head) endService(why string) {
	if h.service != nil {
		h.service.End(h.conn.Snapshot(), why)
	}
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
		Model:            a.engineModel(),
		ServedModelName:  a.cfg.ServedName(),
		TensorParallel:   a.par.Tensor,
		PipelineParallel: a.par.Pipeline,
		Nodes:            len(a.alloc.Nodes),
		GPUs:             a.alloc.TotalGPUs(),
		MetricsPort:      h.ports.Metrics,
		SSHTunnel:        jobfiles.SSHTunnelCommand(h.ports.API, a.alloc.Head(), userName, login),
		Tunnel:           jobfiles.TunnelCommand(a.alloc.JobID, userName, login),
		StartedAt:        a.started.UTC(),
		Restarts:         map[string]int{"vllm": 0},
		Gateway:          a.cfg.Gateway,
		KeysFile:         a.cfg.KeysFile,
		Launcher:         a.cfg.Launcher,
		Models:           layout.Placements(a.models, a.tensors),
	}
	if a.loraJob.on() {
		c.LoRAMaxRank = a.loraJob.maxRank
		c.Adapters = connectionAdapters(a.loraJob.list())
		if h.ownerKey != "" {
			c.OwnerKeyFile = filepath.Join(a.stateDir, jobfiles.OwnerKeyFile)
		}
	}
	if a.usesRay() {
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

// expected returns the job's hosts and, where known, their addresses.
func (h *head) expected() ([]string, []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.alloc.Nodes, append([]string(nil), h.addresses...)
}

// watchNodes reads the nodes' published info until every node is in, keeping the connection
// file's metrics list and the Prometheus targets current.
func (h *head) watchNodes(ctx context.Context) {
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
		case <-h.deps.Clock.After(nodeFilesPollInterval):
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
		ep := jobfiles.NodeEndpoint{Node: n.Host, Role: n.Role, MetricsURL: n.MetricsURL()}
		if n.Role == "head" || len(n.ReplicaPorts) > 0 {
			ep.EngineMetricsURL = strings.TrimSuffix(ep.MetricsURL, "/metrics") + vllm.EngineMetricsPath
		}
		eps = append(eps, ep)
	}
	h.mu.Lock()
	h.addresses = addrs
	h.mu.Unlock()
	_ = h.conn.Update(func(c *jobfiles.Connection) { c.Metrics = eps })
	if err := h.writeTargets(infos); err != nil {
		h.log.Warn("cannot write prometheus targets", "error", err)
	}
}

// rendezvous is what every rendezvous the head publishes holds: this launch's identity, the
// head's address and the job's ports, and when.
func (h *head) rendezvous() jobfiles.Rendezvous {
	rv := h.rendezvousID()
	rv.HeadAddress, rv.Ports, rv.CreatedAt = h.addr, h.ports, h.deps.Clock.Now().UTC()
	return rv
}
