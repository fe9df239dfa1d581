package webui

import (
	"net/http"
	"sort"
	"strconv"

	dto "github.com/prometheus/client_model/go"

	"github.com/llm-agent/llm-agent/agent/gateway"
)

// parseGPUs reads the GPUs from an agent's llm_agent_gpu_* metrics.
func parseGPUs(families map[string]*dto.MetricFamily) ([]GPU, string) {
	if up := families["llm_agent_gpu_up"]; up != nil && len(up.Metric) > 0 && up.Metric[0].GetGauge().GetValue() == 0 {
		return []GPU{}, "no GPU seen (NVML found none)"
	}
	byIndex := map[string]*GPU{}
	get := func(m *dto.Metric) *GPU {
		var idx, name string
		for _, l := range m.Label {
			switch l.GetName() {
			case "gpu":
				idx = l.GetValue()
			case "name":
				name = l.GetValue()
			}
		}
		g := byIndex[idx]
		if g == nil {
			g = &GPU{Index: idx, Name: name}
			byIndex[idx] = g
		}
		return g
	}
	const mib = 1 << 20
	set := func(family string, f func(*GPU, float64)) {
		if fam := families[family]; fam != nil {
			for _, m := range fam.Metric {
				f(get(m), m.GetGauge().GetValue())
			}
		}
	}
	set("llm_agent_gpu_utilization_ratio", func(g *GPU, v float64) { g.Utilization = v })
	set("llm_agent_gpu_memory_used_bytes", func(g *GPU, v float64) { g.MemoryUsedMiB = v / mib })
	set("llm_agent_gpu_memory_total_bytes", func(g *GPU, v float64) { g.MemoryTotalMiB = v / mib })
	gpus := []GPU{}
	for _, g := range byIndex {
		gpus = append(gpus, *g)
	}
	sort.Slice(gpus, func(i, j int) bool { // by number: GPU 10 after GPU 9
		a, errA := strconv.Atoi(gpus[i].Index)
		b, errB := strconv.Atoi(gpus[j].Index)
		if errA != nil || errB != nil {
			return gpus[i].Index < gpus[j].Index
		}
		return a < b
	})
	if len(gpus) == 0 {
		return gpus, "no GPU metrics"
	}
	return gpus, ""
}

func (p *Page) status(w http.ResponseWriter, r *http.Request, _ gateway.Key, _ string) {
	st, err := p.opts.Status(r)
	if err != nil {
		p.opts.Logger.Warn("web page status", "error", err)
		apiError(w, http.StatusServiceUnavailable, "the job's status cannot be read now")
		return
	}
	writeJSON(w, st)
}

// usage gives the key's own row; the owner gets every key's and project's.
func (p *Page) usage(w http.ResponseWriter, _ *http.Request, k gateway.Key, _ string) {
	rep, err := p.opts.Usage()
	if err != nil {
		p.opts.Logger.Warn("web page usage", "error", err)
		apiError(w, http.StatusServiceUnavailable, "the usage records cannot be read now")
		return
	}
	if !p.opts.Owner(k) {
		var own []gateway.UsageRow
		for _, row := range rep.Keys {
			if row.Key == k.Name {
				own = append(own, row)
			}
		}
		rep.Keys, rep.Projects = own, nil
	}
	writeJSON(w, rep)
}

// models and chat go through the gateway with the session's key, as any client's request.
func (p *Page) models(w http.ResponseWriter, r *http.Request, _ gateway.Key, secret string) {
	p.forward(w, r, http.MethodGet, "/v1/models", secret)
}

func (p *Page) chat(w http.ResponseWriter, r *http.Request, _ gateway.Key, secret string) {
	p.forward(w, r, http.MethodPost, "/v1/chat/completions", secret)
}

func (p *Page) forward(w http.ResponseWriter, r *http.Request, method, path, secret string) {
	out := r.Clone(r.Context())
	out.Method, out.URL.Path, out.URL.RawPath, out.URL.RawQuery, out.RequestURI = method, path, "", "", ""
	out.Header = http.Header{"Authorization": {"Bearer " + secret}}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		out.Header.Set("Content-Type", ct)
	}
	p.opts.Gateway.ServeHTTP(w, out)
}
