package head

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/llm-agent/llm-agent/agent/engine"
	"github.com/llm-agent/llm-agent/healthcheck"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/ray"
	"github.com/llm-agent/llm-agent/supervisor"
	"github.com/llm-agent/llm-agent/vllm"
)

// engineService returns the supervised `vllm serve`, gated on a whole Ray cluster, or with
// --launcher mp on every worker's rank.
func (h *head) engineService(events chan<- supervisor.Event) (*supervisor.Service, func(), error) {
	e := h.env
	eng := h.engineEndpoint()
	// Behind the gateway the socket is used and the host ignored; with --gateway=false vLLM holds
	// the public port on every interface, with the job's key (docs/security.md says what that
	// leaves open).
	c := engine.Child{Name: "vllm", GPUs: e.SlotGPUs(0), // the head's share when nodes run several replicas
		Spec: vllm.ServeSpec{Model: e.EngineModel(), ServedName: e.Cfg.ServedName(), Host: "0.0.0.0", Port: eng.Port,
			Socket: eng.Socket, Tensor: e.Par.Tensor, Pipeline: e.Par.Pipeline, RayExecutor: h.engineOnRay(), Extra: e.Cfg.VLLMArgs},
		Env: append(ray.Env(e.Addr, e.Ifname), "VLLM_API_KEY="+h.front.EngineKey),
		OnEvent: func(ev supervisor.Event) {
			h.ranks.Running(ev.State == supervisor.StateRunning)
			_ = h.conn.Update(func(c *jobfiles.Connection) { c.Restarts["vllm"] = ev.Restarts })
			events <- ev
		}}
	if h.ranks.Active() {
		c.Spec, c.Env = h.ranks.Spec(c.Spec, c.Env)
		c.BeforeStart = h.ranks.NextGeneration
	}
	if h.engineOnRay() {
		c.Env, c.RayAuth = append(c.Env, "RAY_ADDRESS="+h.rayc.GCSAddress), true
	}
	opts, out, closeOut, err := engine.Options(e, c)
	if err != nil {
		return nil, nil, err
	}
	h.engineOut = out
	switch {
	case h.ranks.Active():
		opts.Before = h.ranks.Wait
		// Slurm stops every node of the job at once: rank 0 ending because a worker's rank was
		// stopped is part of that stop, not a crash to restart and count.
		opts.Stopping, opts.StopSettle = h.ranks.StopShows, 0 // it settles itself, for any end
	case e.UsesRay():
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
	return vllm.Probe{BaseURL: eng.BaseURL(), APIKey: h.front.EngineKey, Client: &http.Client{Transport: eng.Transport(2)}}
}

// probeEngine waits for the engine that just started to become ready, then watches its
// liveness, until ctx ends.
func (h *head) probeEngine(ctx context.Context) {
	e := h.env
	var activity func() healthcheck.Activity
	if gw := h.front.Gateway(); gw != nil {
		activity = gw.Activity
	}
	if e.Replicated() {
		h.answering.Follow(ctx, e, h.engineProbe(), activity)
	}
	engine.Follow(ctx, e, h.engineProbe(), h.engine, activity, func() {
		e.State.SetReady(true, "", time.Now())
		_ = h.conn.SetState(jobfiles.StateReady, "")
		e.Log.Info("engine ready", "url", h.conn.Snapshot().BaseURL, "since_start", time.Since(e.Started).Round(time.Millisecond))
	})
}

// withEngineError adds the engine's last error line to the reason an engine exited.
func (h *head) withEngineError(reason string) string {
	if strings.HasPrefix(reason, "exit status") {
		return reason + h.engineSaid()
	}
	return reason
}

// engineSaid is the engine's first error line of its last run, as a reason's tail, with what to
// change when it ran out of GPU memory; "" when it said none.
func (h *head) engineSaid() string {
	said := h.engineOut.FirstError()
	if said == "" {
		return ""
	}
	tail := "; the engine said: " + said
	if vllm.OutOfGPUMemory(said) {
		e := h.env
		tail += fmt.Sprintf("; %s (llm-agent plan --model %s --nodes %d --gpus-per-node %d shows what fits)",
			vllm.GPUMemoryAdvice, e.Cfg.Model, len(e.Alloc.Nodes), e.Alloc.GPUs)
	}
	return tail
}

func (h *head) setNotReady(reason string) {
	h.env.State.SetReady(false, reason, time.Now())
	if h.env.Replicated() && h.front.Gateway() != nil && h.remoteUp() {
		h.env.Log.Info("the head's engine is out; the other replicas serve", "reason", reason)
		return // the service stays ready (followReplicas)
	}
	state := jobfiles.StateStarting
	if h.conn.EverReady() {
		state = jobfiles.StateRestarting
	}
	_ = h.conn.SetState(state, reason)
}
