package metrics

import (
	"maps"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
)

// FileWrites is how the writes of one of the state directory's files went.
type FileWrites struct {
	// OK tells whether the last write succeeded; Failures counts those that failed.
	OK       bool
	Failures int
}

// SetWriteError records a write of file (connection.json): err nil when it succeeded. A full
// disk shows as OK false and a count of failures, never as a file half written.
func (s *State) SetWriteError(file string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.writes == nil {
		s.writes = map[string]FileWrites{}
	}
	w := s.writes[file]
	w.OK = err == nil
	if err != nil {
		w.Failures++
	}
	s.writes[file] = w
}

// Unwritable lists the files whose last write failed, for /healthz: names only, never the
// error, which may hold paths.
func (s *State) Unwritable() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, f := range slices.Sorted(maps.Keys(s.writes)) {
		if !s.writes[f].OK {
			out = append(out, f)
		}
	}
	return out
}

// fileCollector exports the state directory's writes.
type fileCollector struct {
	state        *State
	ok, failures *prometheus.Desc
}

// NewFileCollector returns the series of the state directory's writes.
func NewFileCollector(s *State) prometheus.Collector {
	node, job, _ := s.Labels()
	c := prometheus.Labels{"node": node, "job": job}
	return &fileCollector{state: s,
		ok: prometheus.NewDesc("llm_agent_state_write_ok", "1 while the last write of the state directory's file succeeded; 0 after one failed (a full disk: the file keeps its last whole version).",
			[]string{"file"}, c),
		failures: prometheus.NewDesc("llm_agent_state_write_errors_total", "Writes of the state directory's file that failed.", []string{"file"}, c)}
}

func (c *fileCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.ok
	ch <- c.failures
}

func (c *fileCollector) Collect(ch chan<- prometheus.Metric) {
	c.state.mu.Lock()
	writes := maps.Clone(c.state.writes)
	c.state.mu.Unlock()
	for f, w := range writes {
		ch <- prometheus.MustNewConstMetric(c.ok, prometheus.GaugeValue, b2f(w.OK), f)
		ch <- prometheus.MustNewConstMetric(c.failures, prometheus.CounterValue, float64(w.Failures), f)
	}
}
