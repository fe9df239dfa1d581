package head

import (
	"context"
	"net"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/llm-agent/llm-agent/agent/layout"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/vllm"
)

// nodeFilesPollInterval is how often the head reads the nodes' published files until every
// node is in.
const nodeFilesPollInterval = time.Second

// initialConnection is the connection file as the head first writes it.
func (h *head) initialConnection() jobfiles.Connection {
	e := h.env
	userName := e.Getenv("USER")
	if userName == "" {
		if u, err := user.Current(); err == nil {
			userName = u.Username
		}
	}
	login := e.Cfg.LoginHost
	if login == "" {
		login = e.Alloc.SubmitHost
	}
	hostPort := net.JoinHostPort(e.Addr, strconv.Itoa(h.ports.API))
	c := jobfiles.Connection{
		JobID:            e.Alloc.JobID,
		State:            jobfiles.StateStarting,
		HeadHost:         e.Alloc.Head(),
		HeadAddress:      e.Addr,
		Port:             h.ports.API,
		EnginePort:       h.engineEndpoint().Port,
		EngineSocket:     h.engineEndpoint().Socket,
		BaseURL:          "http://" + hostPort + "/v1",
		Model:            e.EngineModel(),
		ServedModelName:  e.Cfg.ServedName(),
		TensorParallel:   e.Par.Tensor,
		PipelineParallel: e.Par.Pipeline,
		Nodes:            len(e.Alloc.Nodes),
		GPUs:             e.Alloc.TotalGPUs(),
		MetricsPort:      h.ports.Metrics,
		SSHTunnel:        jobfiles.SSHTunnelCommand(h.ports.API, e.Alloc.Head(), userName, login),
		Tunnel:           jobfiles.TunnelCommand(e.Alloc.JobID, userName, login),
		StartedAt:        e.Started.UTC(),
		Restarts:         map[string]int{"vllm": 0},
		Gateway:          e.Cfg.Gateway,
		KeysFile:         e.Cfg.KeysFile,
		Launcher:         e.Cfg.Launcher,
		Models:           layout.Placements(e.Models, e.Tensors),
	}
	if e.LoRAJob.On() {
		c.LoRAMaxRank = e.LoRAJob.MaxRank()
		c.Adapters = e.LoRAJob.Connection()
		if h.front.OwnerKey != "" {
			c.OwnerKeyFile = filepath.Join(e.StateDir, jobfiles.OwnerKeyFile)
		}
	}
	if e.UsesRay() {
		c.RayAddress = net.JoinHostPort(e.Addr, strconv.Itoa(h.ports.RayGCS))
		// The dashboard listens on the head's loopback only: the owner tunnels to it and
		// presents the token.
		c.RayDashboardURL = "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(h.ports.Dashboard))
		c.RayDashboardTunnel = jobfiles.DashboardTunnelCommand(h.ports.Dashboard, e.Alloc.Head(), userName, login)
		c.RayTokenFile = e.RayTokenPath()
		c.Restarts["ray"] = 0
	}
	if !e.Alloc.EndTime.IsZero() {
		end := e.Alloc.EndTime.UTC()
		c.JobEndTime = &end
	}
	return c
}

// expected returns the job's hosts and, where known, their addresses.
func (h *head) expected() ([]string, []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.env.Alloc.Nodes, append([]string(nil), h.addresses...)
}

// watchNodes reads the nodes' published info until every node is in, keeping the connection
// file's metrics list and the Prometheus targets current.
func (h *head) watchNodes(ctx context.Context) {
	seen := -1
	for {
		infos := jobfiles.ReadNodeInfos(h.env.StateDir, h.env.Alloc.Nodes)
		if len(infos) != seen {
			seen = len(infos)
			h.publishNodes(infos)
		}
		if seen == len(h.env.Alloc.Nodes) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-h.env.Clock.After(nodeFilesPollInterval):
		}
	}
}

func (h *head) publishNodes(infos []jobfiles.NodeInfo) {
	addrs := make([]string, len(h.env.Alloc.Nodes))
	var eps []jobfiles.NodeEndpoint
	for _, n := range infos {
		for i, host := range h.env.Alloc.Nodes {
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
		h.env.Log.Warn("cannot write prometheus targets", "error", err)
	}
}

// rendezvous is what every rendezvous the head publishes holds: this launch's identity, the
// head's address and the job's ports, and when.
func (h *head) rendezvous() jobfiles.Rendezvous {
	rv := h.env.RendezvousID()
	rv.HeadAddress, rv.Ports, rv.CreatedAt = h.env.Addr, h.ports, h.env.Clock.Now().UTC()
	return rv
}

// filesRetryInterval is how often the head writes the connection file again after a write
// failed (a full disk), and records how its writes go.
const filesRetryInterval = time.Second

// retryFiles keeps the connection file true once the disk takes writes again: a write that
// failed left the last whole file, and the state is written as it is now. The metrics and
// /healthz say while it cannot be written.
func (h *head) retryFiles(ctx context.Context) {
	for {
		if err := h.conn.Retry(); err != nil {
			h.env.Log.Warn("cannot write the connection file; the last whole one stays", "error", err)
		}
		h.env.State.SetWriteError(jobfiles.ConnectionFile, h.conn.Failed())
		select {
		case <-ctx.Done():
			return
		case <-h.env.Clock.After(filesRetryInterval):
		}
	}
}
