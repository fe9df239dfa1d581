// Package status answers `llm-agent status` and `llm-agent usage` from the job's files: the
// connection file, each node's probes, the service's file and the usage records. It reads;
// it never starts anything.
package status

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/llm-agent/llm-agent/agent/gateway"
	"github.com/llm-agent/llm-agent/jobfiles"
)

// ErrNoJob is returned when the connection file of a job cannot be found.
var ErrNoJob = jobfiles.ErrNoJob

// NodeStatus is one node as `llm-agent status` probed it.
type NodeStatus struct {
	Node    string `json:"node"`
	Role    string `json:"role"`
	Healthy bool   `json:"healthy"`
	Ready   bool   `json:"ready"`
	Detail  string `json:"detail,omitempty"`
	// Warning is what the node's /healthz warns of: a file of the state directory it cannot
	// write (a full disk).
	Warning string `json:"warning,omitempty"`
	// MetricsURL is the node's agent's /metrics, for readers that scrape it (the web page).
	MetricsURL string `json:"-"`
}

// Report is what `llm-agent status` prints.
type Report struct {
	JobID    string                `json:"job_id"`
	State    jobfiles.ServiceState `json:"state"`
	Reason   string                `json:"reason,omitempty"`
	Ready    bool                  `json:"ready"`
	URL      string                `json:"url"`
	Model    string                `json:"model"`
	Tensor   int                   `json:"tensor_parallel_size"`
	Pipeline int                   `json:"pipeline_parallel_size"`
	GPUs     int                   `json:"gpus"`
	Uptime   float64               `json:"uptime_seconds"`
	TimeLeft *float64              `json:"time_left_seconds,omitempty"`
	Restarts map[string]int        `json:"restarts"`
	Nodes    []NodeStatus          `json:"nodes"`
	// Replicas are the engine's replicas with --replicas, as the head's gateway sees them.
	Replicas []jobfiles.Replica `json:"replicas,omitempty"`
	// Models are the models of a job that serves several, and where each runs.
	Models []jobfiles.ModelPlacement `json:"models,omitempty"`
	// Adapters are the LoRA adapters served now.
	Adapters  []jobfiles.Adapter `json:"adapters,omitempty"`
	SSHTunnel string             `json:"ssh_tunnel"`
	Tunnel    string             `json:"tunnel,omitempty"`
	File      string             `json:"connection_file"`
	// Service is the service's part of its file, for status --service.
	Service *jobfiles.ServiceInfo `json:"service,omitempty"`
}

// ConnectionPath finds a job's connection file from a job id, a state directory or the file.
func ConnectionPath(arg, home string) (string, error) { return jobfiles.FindConnection(arg, home) }

// Read reads the connection file at path and probes every node's /healthz and /readyz.
func Read(ctx context.Context, path string, client *http.Client, now time.Time) (Report, error) {
	// A job's file, or a service's, which is a job's with the service's part.
	var f struct {
		jobfiles.Connection
		Service *jobfiles.ServiceInfo `json:"service"`
	}
	if err := jobfiles.ReadJSON(path, &f); err != nil {
		return Report{}, fmt.Errorf("%w: %w", ErrNoJob, err)
	}
	c := f.Connection
	r := Report{JobID: c.JobID, State: c.State, Reason: c.Reason, URL: c.BaseURL, Model: c.ServedModelName,
		Tensor: c.TensorParallel, Pipeline: c.PipelineParallel, GPUs: c.GPUs, Restarts: c.Restarts,
		SSHTunnel: c.SSHTunnel, Tunnel: c.Tunnel, File: path, Replicas: c.Replicas, Models: c.Models, Adapters: c.Adapters}
	live := !c.State.Ended()
	// An ended job's uptime runs to its last update (when it stopped), and it has no time left.
	upTo := now
	if !live && !c.UpdatedAt.IsZero() {
		upTo = c.UpdatedAt
	}
	if !c.StartedAt.IsZero() {
		r.Uptime = max(0, upTo.Sub(c.StartedAt).Seconds())
	}
	if c.JobEndTime != nil && live {
		left := max(0, c.JobEndTime.Sub(now).Seconds())
		r.TimeLeft = &left
	}
	headReady := false
	for _, ep := range c.Metrics {
		n := NodeStatus{Node: ep.Node, Role: ep.Role, MetricsURL: ep.MetricsURL}
		if live {
			base := strings.TrimSuffix(ep.MetricsURL, "/metrics")
			var detail, health string
			n.Healthy, health = probe(ctx, client, base+"/healthz")
			n.Ready, detail = probe(ctx, client, base+"/readyz")
			if !n.Ready {
				n.Detail = detail
			}
			if _, warning, ok := strings.Cut(health, "warning: "); ok { // a file it cannot write
				n.Warning = warning
			}
			if ep.Role == "head" {
				headReady = n.Ready
				if !n.Ready && c.Reason != "" {
					n.Detail = c.Reason // the node says only "not ready"; the owner's file says why
				}
			}
		}
		r.Nodes = append(r.Nodes, n)
	}
	r.Ready = c.State == jobfiles.StateReady && headReady
	r.Service = f.Service
	return r, nil
}

// probe GETs url and reports whether it answered 200, with the body or error otherwise.
func probe(ctx context.Context, client *http.Client, url string) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false, err.Error()
	}
	resp, err := client.Do(req)
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	return resp.StatusCode == http.StatusOK, strings.TrimSpace(string(b))
}

// WriteTable prints the report for people.
func (r Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	state := string(r.State)
	if r.Reason != "" {
		state += " (" + r.Reason + ")"
	}
	ready := "no"
	if r.Ready {
		ready = "yes"
	}
	fmt.Fprintf(tw, "job\t%s\n", r.JobID)
	fmt.Fprintf(tw, "state\t%s\n", state)
	fmt.Fprintf(tw, "ready\t%s\n", ready)
	fmt.Fprintf(tw, "url\t%s\n", r.URL)
	if len(r.Models) > 1 {
		for _, m := range r.Models {
			fmt.Fprintf(tw, "model %s\t%s, %d replica(s) of tensor %d on %s\n", m.Name, m.Model, len(m.Nodes), m.Tensor, strings.Join(m.Nodes, ", "))
		}
	} else {
		fmt.Fprintf(tw, "model\t%s (tensor %d x pipeline %d)\n", r.Model, r.Tensor, r.Pipeline)
	}
	fmt.Fprintf(tw, "gpus\t%d\n", r.GPUs)
	fmt.Fprintf(tw, "uptime\t%s\n", roundDuration(r.Uptime))
	switch {
	case r.TimeLeft != nil:
		fmt.Fprintf(tw, "time left\t%s\n", roundDuration(*r.TimeLeft))
	case r.State.Ended():
		fmt.Fprintf(tw, "time left\tnone (ended)\n")
	default:
		fmt.Fprintf(tw, "time left\tunknown\n")
	}
	r.writeRuntime(tw)
	r.writeService(tw)
	if r.Tunnel != "" {
		fmt.Fprintf(tw, "tunnel\t%s\n", r.Tunnel)
		fmt.Fprintf(tw, "or ssh\t%s\n", r.SSHTunnel)
	} else {
		fmt.Fprintf(tw, "tunnel\t%s\n", r.SSHTunnel)
	}
	return tw.Flush()
}

// writeRuntime prints the restarts, the nodes, the replicas and the adapters.
func (r Report) writeRuntime(tw io.Writer) {
	var restarts []string
	for _, k := range slices.Sorted(maps.Keys(r.Restarts)) {
		restarts = append(restarts, fmt.Sprintf("%s %d", k, r.Restarts[k]))
	}
	fmt.Fprintf(tw, "restarts\t%s\n", strings.Join(restarts, ", "))
	for _, n := range r.Nodes {
		s := "not probed"
		switch {
		case n.Ready:
			s = "ready"
		case n.Healthy && (n.Detail == "" || n.Detail == "not ready"):
			s = "up, not ready"
		case n.Healthy:
			s = "up, not ready: " + n.Detail
		case n.Detail != "":
			s = "unreachable: " + n.Detail
		}
		if n.Warning != "" {
			s += "; warning: " + n.Warning
		}
		fmt.Fprintf(tw, "node %s\t%s, %s\n", n.Node, n.Role, s)
	}
	for _, rep := range r.Replicas {
		model := ""
		if rep.Model != "" {
			model = rep.Model + ", "
		}
		fmt.Fprintf(tw, "replica %s\t%s%s, %d GPUs, %d restarts, %d in flight\n", rep.Node, model, rep.State, rep.GPUs, rep.Restarts, rep.InFlight)
	}
	for _, ad := range r.Adapters {
		fmt.Fprintf(tw, "adapter %s\t%s\n", ad.Name, ad.Path)
	}
}

// writeService prints the service the job belongs to, with its successor and its jobs.
func (r Report) writeService(tw io.Writer) {
	if s := r.Service; s != nil {
		line := s.State
		if s.Reason != "" {
			line += ": " + s.Reason
		}
		fmt.Fprintf(tw, "service %s\t%s\n", s.Name, line)
		if s.Until != nil {
			fmt.Fprintf(tw, "until\t%s\n", s.Until.Local().Format(time.RFC3339))
		}
		if n := s.Successor; n != nil {
			fmt.Fprintf(tw, "successor\tjob %s %s %s (attempt %d)\n", n.JobID, n.State, n.Reason, n.Attempts)
		}
		if s.Asleep != nil {
			fmt.Fprintf(tw, "asleep since\t%s (llm-agent service wake %s)\n", s.Asleep.Local().Format(time.RFC3339), s.Name)
		}
		if w := s.Waking; w != nil {
			fmt.Fprintf(tw, "waking\tjob %s queued at %s by %s\n", w.JobID, w.Submitted.Local().Format(time.RFC3339), w.By)
		}
		for _, j := range s.Jobs {
			end := "serving"
			if j.Ended != nil {
				end = j.Ended.Local().Format("2006-01-02 15:04:05") + " " + j.Why
			}
			cold := ""
			if j.Submitted != nil && j.Ready != nil {
				cold = fmt.Sprintf(" (woken: queued %s, ready %s after)", j.Started.Sub(*j.Submitted).Round(time.Second), j.Ready.Sub(*j.Submitted).Round(time.Second))
			}
			fmt.Fprintf(tw, "job %s\t%s, from %s to %s%s\n", j.JobID, j.Node, j.Started.Local().Format("2006-01-02 15:04:05"), end, cold)
		}
	}
}

func roundDuration(sec float64) string {
	return (time.Duration(sec) * time.Second).Round(time.Second).String()
}

// ServiceUsage sums Usage over the jobs of the service whose file is at path.
func ServiceUsage(path string, factor float64, now time.Time) (gateway.UsageReport, error) {
	f, err := jobfiles.ReadService(filepath.Dir(path))
	if err != nil {
		return gateway.UsageReport{}, fmt.Errorf("%w: %w", ErrNoJob, err)
	}
	var reps []gateway.UsageReport
	for _, j := range f.Service.Jobs {
		if _, err := os.Stat(filepath.Join(j.StateDir, gateway.AuditFile)); errors.Is(err, os.ErrNotExist) {
			continue // a job that never served
		}
		rep, err := Usage(filepath.Join(j.StateDir, jobfiles.ConnectionFile), factor, now)
		if err != nil {
			return gateway.UsageReport{}, fmt.Errorf("job %s: %w", j.JobID, err)
		}
		reps = append(reps, rep)
	}
	return gateway.Merge(reps), nil
}

// Usage shares a job's GPU-hours and service units out to its keys and projects, from the
// gateway's audit log. The job's wall time runs to now, or to its last update once it ended.
func Usage(connPath string, factor float64, now time.Time) (gateway.UsageReport, error) {
	gpus, wall, err := jobCost(connPath, now)
	if err != nil {
		return gateway.UsageReport{}, err
	}
	return gateway.SummarizeFile(filepath.Join(filepath.Dir(connPath), gateway.AuditFile), gpus, wall, factor)
}

// jobCost reads a job's GPUs and its wall time, to now or to its last update once it ended.
func jobCost(connPath string, now time.Time) (int, time.Duration, error) {
	c, err := jobfiles.ReadConnection(connPath)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: %w", ErrNoJob, err)
	}
	end := now
	if c.State.Ended() {
		end = c.UpdatedAt
	}
	return c.GPUs, end.Sub(c.StartedAt), nil
}

// LiveUsage is Usage for a job that runs, asked again and again (the web page): each report
// reads only what the audit log gained since the last.
type LiveUsage struct {
	connPath string
	factor   float64
	audit    *gateway.AuditFollower
}

// NewLiveUsage follows the usage of the job whose connection file is at connPath.
func NewLiveUsage(connPath string, factor float64) *LiveUsage {
	return &LiveUsage{connPath: connPath, factor: factor,
		audit: gateway.NewAuditFollower(filepath.Join(filepath.Dir(connPath), gateway.AuditFile))}
}

// Report is the job's usage now.
func (u *LiveUsage) Report(now time.Time) (gateway.UsageReport, error) {
	gpus, wall, err := jobCost(u.connPath, now)
	if err != nil {
		return gateway.UsageReport{}, err
	}
	return u.audit.Report(gpus, wall, u.factor)
}
