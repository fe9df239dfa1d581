package webui

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/llm-agent/llm-agent/agent/status"
	"github.com/llm-agent/llm-agent/jobfiles"
)

// Status is what the page shows of the job.
type Status struct {
	JobID    string         `json:"job_id"`
	State    string         `json:"state"`
	Reason   string         `json:"reason,omitempty"`
	Ready    bool           `json:"ready"`
	Uptime   float64        `json:"uptime_seconds"`
	TimeLeft *float64       `json:"time_left_seconds,omitempty"`
	Restarts map[string]int `json:"restarts"`
	Nodes    []Node         `json:"nodes"`
	Models   []Model        `json:"models"`
	// Service is the service's name; IdleLeft the time until the job is released for want of
	// requests (with --idle-release), HandoverIn the time until its successor may start.
	Service    string   `json:"service,omitempty"`
	IdleLeft   *float64 `json:"idle_release_in_seconds,omitempty"`
	HandoverIn *float64 `json:"handover_in_seconds,omitempty"`
	// Jobs are the service's other jobs: those added under load and its successor, each Queued,
	// Starting, Live or Draining.
	Jobs []ServiceJob `json:"service_jobs,omitempty"`
}

// ServiceJob is one of the service's other jobs as its file tells it.
type ServiceJob struct {
	JobID  string `json:"job_id"`
	Role   string `json:"role"`
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
}

// Node is one node of the job, with its GPUs as its agent's metrics give them.
type Node struct {
	Name    string `json:"name"`
	Role    string `json:"role"`
	Healthy bool   `json:"healthy"`
	Ready   bool   `json:"ready"`
	Detail  string `json:"detail,omitempty"`
	GPUs    []GPU  `json:"gpus"`
	// GPUNote says why no GPU is shown: no NVML, or the metrics gave no answer.
	GPUNote string `json:"gpu_note,omitempty"`
}

// GPU is one GPU's utilisation and memory.
type GPU struct {
	Index          string  `json:"index"`
	Name           string  `json:"name"`
	Utilization    float64 `json:"utilization"`
	MemoryUsedMiB  float64 `json:"memory_used_mib"`
	MemoryTotalMiB float64 `json:"memory_total_mib"`
}

// Model is a served model or adapter and its state: Live, Starting, Restarting, Stopping,
// Failed.
type Model struct {
	Name  string `json:"name"`
	Kind  string `json:"kind"`
	State string `json:"state"`
	Where string `json:"where,omitempty"`
}

// Source reads the job's status from its connection file and its nodes.
type Source struct {
	// ConnectionFile is the job's connection file.
	ConnectionFile string
	// Client reaches the nodes' agents.
	Client *http.Client
	// Idle is how long no request has arrived; IdleRelease and Handover are the service's
	// settings (zero: off).
	Idle                  func() time.Duration
	IdleRelease, Handover time.Duration
	Service               string
	// ServiceDir is the service's folder, whose file lists its other jobs; empty for a job alone.
	ServiceDir string
	// MaxAge is how long an answer is kept for the next page that asks.
	MaxAge time.Duration

	mu     sync.Mutex
	cached Status
	at     time.Time
}

// Read returns the job's status, at most MaxAge old: every open page polls it, and each read
// probes every node.
func (s *Source) Read(r *http.Request) (Status, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.at.IsZero() && time.Since(s.at) < s.MaxAge {
		return s.cached, nil
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	rep, err := status.Read(ctx, s.ConnectionFile, s.Client, time.Now())
	if err != nil {
		return Status{}, fmt.Errorf("read the job's status: %w", err)
	}
	st := fromReport(rep) // its nodes in the report's order
	if !rep.State.Ended() {
		for i, n := range rep.Nodes {
			st.Nodes[i].GPUs, st.Nodes[i].GPUNote = s.gpus(ctx, n.MetricsURL)
		}
	}
	s.countdowns(&st)
	s.cached, s.at = st, time.Now()
	return st, nil
}

func (s *Source) countdowns(st *Status) {
	st.Service = s.Service
	if s.ServiceDir != "" {
		if f, err := jobfiles.ReadService(s.ServiceDir); err == nil {
			st.Jobs = serviceJobs(f.Service)
		}
	}
	if s.IdleRelease > 0 && s.Idle != nil {
		left := max(0, (s.IdleRelease - s.Idle()).Seconds())
		st.IdleLeft = &left
	}
	if s.Service != "" && s.Handover > 0 && st.TimeLeft != nil {
		in := max(0, *st.TimeLeft-s.Handover.Seconds())
		st.HandoverIn = &in
	}
}

func fromReport(rep status.Report) Status {
	st := Status{JobID: rep.JobID, State: string(rep.State), Reason: rep.Reason, Ready: rep.Ready,
		Uptime: rep.Uptime, TimeLeft: rep.TimeLeft, Restarts: rep.Restarts}
	for _, n := range rep.Nodes {
		st.Nodes = append(st.Nodes, Node{Name: n.Node, Role: n.Role, Healthy: n.Healthy, Ready: n.Ready, Detail: n.Detail, GPUs: []GPU{}})
	}
	state := modelState(rep)
	if len(rep.Models) == 0 {
		st.Models = append(st.Models, Model{Name: rep.Model, Kind: "model", State: state})
	}
	for _, m := range rep.Models {
		st.Models = append(st.Models, Model{Name: m.Name, Kind: "model", State: state, Where: strings.Join(m.Nodes, ", ")})
	}
	for _, a := range rep.Adapters {
		st.Models = append(st.Models, Model{Name: a.Name, Kind: "adapter", State: state})
	}
	return st
}

// modelState names the job's state as the page's badges do.
func modelState(rep status.Report) string {
	switch {
	case rep.Ready:
		return "Live"
	case rep.State == jobfiles.StateRestarting:
		return "Restarting"
	case rep.State == jobfiles.StateStopping:
		return "Stopping"
	case rep.State == jobfiles.StateFailed:
		return "Failed"
	case rep.State.Ended():
		return "Stopped"
	}
	return "Starting"
}

// gpus reads a node's GPUs from its agent's metrics.
func (s *Source) gpus(ctx context.Context, metricsURL string) ([]GPU, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, metricsURL, nil)
	if err != nil {
		return []GPU{}, "no metrics"
	}
	resp, err := s.Client.Do(req)
	if err != nil {
		return []GPU{}, "its metrics gave no answer"
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil && len(families) == 0 {
		return []GPU{}, "its metrics could not be read"
	}
	return parseGPUs(families)
}

// serviceJobs are the jobs the service's file lists besides the one serving: added jobs by
// their state, and a successor while it is queued or starting.
func serviceJobs(f jobfiles.ServiceInfo) []ServiceJob {
	badge := map[string]string{jobfiles.ExtraPending: "Queued", jobfiles.ExtraStarting: "Starting",
		"running": "Starting", jobfiles.ExtraReady: "Live", jobfiles.ExtraDraining: "Draining"}
	var jobs []ServiceJob
	for _, x := range f.Extras {
		jobs = append(jobs, ServiceJob{JobID: x.JobID, Role: "added under load", State: badge[x.State], Reason: x.Reason})
	}
	if sc := f.Successor; sc != nil && sc.JobID != "" && badge[sc.State] != "" {
		jobs = append(jobs, ServiceJob{JobID: sc.JobID, Role: "successor", State: badge[sc.State], Reason: sc.Reason})
	}
	return jobs
}
