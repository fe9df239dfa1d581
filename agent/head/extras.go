package head

// The jobs a service adds under load (--max-jobs), as the serving job's head sees them: each
// one's engine joins the gateway's rotation, behind its own gateway and the service's replica
// key, once its entry in the service's file says ready; the head samples every engine's load
// for the service's scaler and takes a job that is drained out of the rotation first.

import (
	"context"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/llm-agent/llm-agent/agent/gateway"
	"github.com/llm-agent/llm-agent/agent/scale"
	"github.com/llm-agent/llm-agent/agent/secrets"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/vllm"
)

// loadTimeout bounds one read of an engine's metrics for the scaler.
const loadTimeout = 2 * time.Second

// rotation is what the gateway routes to besides its own engine.
type rotation struct {
	mu       sync.Mutex
	job      []*gateway.Replica // the job's other replicas (--replicas)
	extra    []*gateway.Replica // the service's added jobs
	urls     map[string]string  // an added job's engine metrics, by replica name
	retiring map[string]bool    // added jobs being drained: never back in the rotation
}

func (r *rotation) setJob(gw *gateway.Gateway, reps []*gateway.Replica) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.job = reps
	gw.SetReplicas(append(slices.Clone(r.job), r.extra...))
}

func (r *rotation) setExtra(gw *gateway.Gateway, reps []*gateway.Replica, urls map[string]string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.extra, r.urls = nil, urls
	for _, x := range reps {
		if !r.retiring[x.Name] {
			r.extra = append(r.extra, x)
		}
	}
	gw.SetReplicas(append(slices.Clone(r.job), r.extra...))
}

// scales tells whether this head serves a service that adds jobs under load.
func (h *head) scales() bool {
	return h.service != nil && !h.service.Extra() && h.env.Cfg.MaxJobs > 1 && h.env.Cfg.Gateway
}

// extraName names an added job's engine in the rotation and the gateway's header.
func extraName(id string) string { return "job " + id }

// watchExtras keeps the service's added jobs that serve in the rotation, until ctx ends.
func (h *head) watchExtras(ctx context.Context) {
	e, gw := h.env, h.front.Gateway()
	for {
		if f, err := jobfiles.ReadService(h.service.Dir()); err == nil {
			var reps []*gateway.Replica
			urls := map[string]string{}
			key, kerr := secrets.LoadAPIKey(h.service.ReplicaKeyFile())
			for _, x := range f.Service.Extras {
				if x.State != jobfiles.ExtraReady || kerr != nil {
					continue
				}
				r := gateway.NewReplica(extraName(x.JobID), vllm.Endpoint{Host: x.Address, Port: x.Port}, key)
				r.Model, r.LoRA = e.Cfg.ServedName(), e.LoRA.On()
				reps = append(reps, r)
				urls[r.Name] = x.EngineMetricsURL
			}
			h.rotation.setExtra(gw, reps, urls)
			gw.CheckReplicas(ctx, replicaCheckTimeout, func(r *gateway.Replica, up bool) {
				e.Log.Info("replica "+map[bool]string{true: "joins the rotation", false: "leaves the rotation"}[up], "replica", r.Name)
			})
		}
		select {
		case <-ctx.Done():
			return
		case <-e.Clock.After(replicaCheckInterval):
		}
	}
}

// Load samples the head's own engine and the added jobs' in the rotation (service.Pool).
func (h *head) Load(ctx context.Context) scale.Sample {
	eng := h.engineEndpoint()
	targets := map[string]*http.Client{eng.BaseURL() + "/metrics": {Transport: eng.Transport(1)}}
	urls := h.rotation.urlsCopy()
	for _, r := range h.front.Gateway().Replicas() { // the gateway's own, with their state
		if u := urls[r.Name]; u != "" && r.Up() {
			targets[u] = http.DefaultClient
		}
	}
	var x scale.Sample
	for url, client := range targets {
		lctx, cancel := context.WithTimeout(ctx, loadTimeout)
		l, err := vllm.ReadLoad(lctx, client, url)
		cancel()
		if err != nil {
			h.env.Log.Debug("cannot read an engine's load", "url", url, "error", err)
			continue
		}
		x.Engines++
		x.Running += int(l.Running)
		x.Waiting += int(l.Waiting)
	}
	return x
}

// Retire takes added job id out of the rotation and waits, up to budget, until its requests
// in flight finish (service.Pool).
func (h *head) Retire(ctx context.Context, id string, budget time.Duration) {
	name, gw := extraName(id), h.front.Gateway()
	var gone *gateway.Replica
	for _, r := range gw.Replicas() { // the gateway's own, whose counts the requests move
		if r.Name == name {
			gone = r
		}
	}
	h.rotation.mu.Lock()
	if h.rotation.retiring == nil {
		h.rotation.retiring = map[string]bool{}
	}
	h.rotation.retiring[name] = true
	h.rotation.mu.Unlock()
	h.rotation.setExtra(gw, h.rotation.extraCopy(), h.rotation.urlsCopy())
	if gone == nil {
		return
	}
	deadline := h.env.Clock.Now().Add(budget)
	for gone.InFlight() > 0 && h.env.Clock.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return
		case <-h.env.Clock.After(100 * time.Millisecond):
		}
	}
	h.env.Log.Info("added job out of the rotation", "job", id, "in_flight", gone.InFlight())
}

func (r *rotation) extraCopy() []*gateway.Replica {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.extra)
}

func (r *rotation) urlsCopy() map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.urls
}
