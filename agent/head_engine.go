package agent

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/llm-agent/llm-agent/healthcheck"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/ray"
	"github.com/llm-agent/llm-agent/supervisor"
	"github.com/llm-agent/llm-agent/vllm"
)

// engineService returns the supervised `vllm serve`, gated on a whole Ray cluster.
func (h *head) engineService(events chan<- supervisor.Event) (*supervisor.Service, func(), error) {
	a := h.agent
	eng := h.engineEndpoint()
	// Behind the gateway the socket is used and the host ignored; with --gateway=false vLLM holds
	// the public port on every interface, with the job's key (docs/security.md says what that
	// leaves open).
	c := engineChild{name: "vllm", gpus: a.slotGPUs(0), // the head's share when nodes run several replicas
		spec: vllm.ServeSpec{Model: a.engineModel(), ServedName: a.cfg.ServedName(), Host: "0.0.0.0", Port: eng.Port,
			Socket: eng.Socket, Tensor: a.par.Tensor, Pipeline: a.par.Pipeline, RayExecutor: h.engineOnRay(), Extra: a.cfg.VLLMArgs},
		env: append(ray.Env(a.addr, a.ifname), "VLLM_API_KEY="+h.engineKey),
		onEvent: func(e supervisor.Event) {
			h.rankRunning(e.State == supervisor.StateRunning)
			_ = h.conn.Update(func(c *jobfiles.Connection) { c.Restarts["vllm"] = e.Restarts })
			events <- e
		}}
	if h.engineRanks() {
		c.spec = h.rankSpec(c.spec)
		c.env = append(c.env, "VLLM_PORT="+strconv.Itoa(h.ports.EngineRPC))
		c.beforeStart = h.nextGeneration
	}
	if h.engineOnRay() {
		c.env, c.rayAuth = append(c.env, "RAY_ADDRESS="+h.rayc.GCSAddress), true
	}
	opts, out, closeOut, err := a.engineOptions(c)
	if err != nil {
		return nil, nil, err
	}
	h.engineOut = out
	switch {
	case h.engineRanks():
		opts.Before = h.waitRanks
		// Slurm stops every node of the job at once: rank 0 ending because a worker's rank was
		// stopped is part of that stop, not a crash to restart and count.
		opts.Stopping, opts.StopSettle = h.stopShows, 0 // it settles itself, for any end
	case a.usesRay():
		opts.Before = h.waitCluster
	}
	return supervisor.NewService(opts), closeOut, nil
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

// probeEngine waits for the engine that just started to become ready, then watches its
// liveness, until ctx ends.
func (h *head) probeEngine(ctx context.Context) {
	a := h.agent
	var activity func() healthcheck.Activity
	if h.front.gw != nil {
		activity = h.front.gw.Activity
	}
	if a.replicated() {
		h.answering.follow(ctx, a, h.engineProbe(), activity)
	}
	a.followEngine(ctx, h.engineProbe(), h.engine, activity, func() {
		a.state.SetReady(true, "", time.Now())
		_ = h.conn.SetState(jobfiles.StateReady, "")
		a.log.Info("engine ready", "url", h.conn.Snapshot().BaseURL, "since_start", time.Since(a.started).Round(time.Millisecond))
	})
}

// followEngine waits for an engine that just started to become ready (else restarts it),
// calls ready, then watches its liveness and restarts it when it fails, until ctx ends.
// activity is what the gateway in front of it sees of its requests, if any.
func (a *agent) followEngine(ctx context.Context, eng vllm.Probe, svc *supervisor.Service, activity func() healthcheck.Activity, ready func()) {
	served := a.cfg.ServedName()
	rctx, cancel := context.WithTimeout(ctx, a.cfg.EngineTimeout)
	err := healthcheck.WaitReady(rctx, a.deps.Clock, readinessPollInterval, func(ctx context.Context) error {
		pctx, cancel := context.WithTimeout(ctx, readinessProbeTimeout)
		defer cancel()
		return eng.Ready(pctx, served)
	})
	cancel()
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		svc.Restart("start_timeout", fmt.Sprintf("engine not ready within %s: %v", a.cfg.EngineTimeout, err))
		return
	}
	ready()
	healthcheck.Liveness{
		Probe:     eng.Health,
		Interval:  a.cfg.ProbeInterval,
		Timeout:   a.cfg.ProbeTimeout,
		HangAfter: a.cfg.HangAfter,
		Clock:     a.deps.Clock,
		Activity:  activity,
		OnUnhealthy: func(err error) {
			a.log.Warn("engine unhealthy, restarting", "reason", err)
			svc.Restart("unhealthy", err.Error())
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
	if h.replicated() && h.front.gw != nil && h.remoteUp() {
		h.log.Info("the head's engine is out; the other replicas serve", "reason", reason)
		return // the service stays ready (followReplicas)
	}
	state := jobfiles.StateStarting
	if h.conn.EverReady() {
		state = jobfiles.StateRestarting
	}
	_ = h.conn.SetState(state, reason)
}
