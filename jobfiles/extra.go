package jobfiles

import "time"

// The states of a service's extra job.
const (
	ExtraPending  = "pending"  // queued by the serving job
	ExtraStarting = "starting" // running, its engine not ready yet
	ExtraReady    = "ready"    // its engine serves behind its gateway, in the rotation
	ExtraDraining = "draining" // out of the rotation, finishing what it has, then cancelled
)

// ExtraJob is a job the serving job added under load (--max-jobs): one more engine behind the
// service's endpoint. The serving job's gateway routes to it with the service's replica key;
// no client key opens it.
type ExtraJob struct {
	JobID string `json:"job_id"`
	// Of is the job that added it.
	Of    string `json:"of"`
	State string `json:"state"`
	// Node is its head; Address and Port where its gateway listens; EngineMetricsURL its
	// engine's own /metrics, passed through on its node's metrics port.
	Node             string `json:"node,omitempty"`
	Address          string `json:"address,omitempty"`
	Port             int    `json:"port,omitempty"`
	EngineMetricsURL string `json:"engine_metrics_url,omitempty"`
	// Submitted is when it was queued; Ready when it joined the rotation.
	Submitted time.Time  `json:"submitted_at"`
	Ready     *time.Time `json:"ready_at,omitempty"`
	// Reason says why it is in its state: the load that added it, squeue's reason while it
	// waits, why it is drained.
	Reason string `json:"reason,omitempty"`
}

// Extra returns the entry of job id among the service's extra jobs, or nil.
func (s *ServiceInfo) Extra(id string) *ExtraJob {
	for i := range s.Extras {
		if s.Extras[i].JobID == id {
			return &s.Extras[i]
		}
	}
	return nil
}

// DropExtra removes job id from the service's extra jobs.
func (s *ServiceInfo) DropExtra(id string) {
	out := s.Extras[:0]
	for _, x := range s.Extras {
		if x.JobID != id {
			out = append(out, x)
		}
	}
	s.Extras = out
	if len(s.Extras) == 0 {
		s.Extras = nil
	}
}
