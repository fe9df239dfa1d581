package metrics

import (
	"maps"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llm-agent/llm-agent/slurm"
	"github.com/llm-agent/llm-agent/supervisor"
)

// AgentCollector exports the agent's own state, read at scrape time.
type AgentCollector struct {
	state *State
	now   func() time.Time

	info, childState, childUp, restarts, uptime                   *prometheus.Desc
	rayAlive, rayExpected, ready, timeToReady, started, remaining *prometheus.Desc
	endTime, gpuSeconds, serviceUnits, suFactor, gpus             *prometheus.Desc
	prepBytes, prepSize, prepSeconds, prepRate                    *prometheus.Desc
}

var _ prometheus.Collector = (*AgentCollector)(nil)

// NewAgentCollector returns a collector of state; now is the clock (nil: time.Now).
func NewAgentCollector(state *State, now func() time.Time) *AgentCollector {
	if now == nil {
		now = time.Now
	}
	node, job, _ := state.Labels()
	c := prometheus.Labels{"node": node, "job": job}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("llm_agent_"+name, help, labels, c)
	}
	return &AgentCollector{
		state:        state,
		now:          now,
		info:         d("info", "Always 1; labels describe the agent.", "role"),
		childState:   d("child_state", "1 for the state the child process is in, 0 for the others.", "child", "state"),
		childUp:      d("child_up", "1 while the child process runs.", "child"),
		restarts:     d("child_restarts_total", "Restarts of the child process by reason.", "child", "reason"),
		uptime:       d("child_uptime_seconds", "Seconds since the child process last started; 0 when it is not running.", "child"),
		rayAlive:     d("ray_nodes_alive", "Ray nodes alive, as the head last saw them."),
		rayExpected:  d("ray_nodes_expected", "Ray nodes the job expects: one per Slurm node."),
		ready:        d("ready", "1 while the service is ready (head) or this node's part is up (worker)."),
		timeToReady:  d("time_to_ready_seconds", "Seconds from agent start to the first time the service was ready."),
		started:      d("start_time_seconds", "Unix time the agent started."),
		remaining:    d("job_remaining_seconds", "Seconds until the Slurm job's end time."),
		endTime:      d("job_end_time_seconds", "Unix time of the Slurm job's end."),
		gpuSeconds:   d("gpu_seconds_total", "GPU-seconds the job has held so far: wall seconds times GPUs."),
		serviceUnits: d("service_units_total", "Service units consumed so far: wall hours times GPUs times the SU factor."),
		suFactor:     d("service_unit_factor", "Service units charged per GPU-hour."),
		gpus:         d("job_gpus", "GPUs the whole job holds."),
		prepBytes:    d("model_prep_bytes", "Bytes of the model this node has read before the engine starts: hashed to verify, or copied and hashed to stage.", "phase"),
		prepSize:     d("model_prep_size_bytes", "Bytes of the model this node reads in the phase.", "phase"),
		prepSeconds:  d("model_prep_seconds", "Seconds this node has spent in the phase of the model's preparation.", "phase"),
		prepRate:     d("model_prep_bytes_per_second", "Bytes per second this node read in the phase of the model's preparation.", "phase"),
	}
}

// Describe sends the static descriptions.
func (c *AgentCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.info, c.childState, c.childUp, c.restarts, c.uptime,
		c.rayAlive, c.rayExpected, c.ready, c.timeToReady, c.started, c.remaining, c.endTime,
		c.gpuSeconds, c.serviceUnits, c.suFactor, c.gpus, c.prepBytes, c.prepSize, c.prepSeconds, c.prepRate} {
		ch <- d
	}
}

// Collect reads the state once and sends every metric.
func (c *AgentCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.state.Snapshot()
	now := c.now()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(c.info, 1, s.Role)
	for _, name := range slices.Sorted(maps.Keys(s.Children)) {
		child := s.Children[name]
		for _, st := range supervisor.States {
			gauge(c.childState, b2f(child.State == st), name, string(st))
		}
		gauge(c.childUp, b2f(child.State == supervisor.StateRunning), name)
		up := 0.0
		if !child.Since.IsZero() {
			up = now.Sub(child.Since).Seconds()
		}
		gauge(c.uptime, up, name)
		for _, reason := range slices.Sorted(maps.Keys(child.Restarts)) {
			ch <- prometheus.MustNewConstMetric(c.restarts, prometheus.CounterValue, float64(child.Restarts[reason]), name, reason)
		}
	}
	if s.RayExpected > 0 {
		gauge(c.rayAlive, float64(s.RayAlive))
		gauge(c.rayExpected, float64(s.RayExpected))
	}
	gauge(c.ready, b2f(s.Ready))
	if !s.FirstReadyAt.IsZero() {
		gauge(c.timeToReady, s.FirstReadyAt.Sub(s.Started).Seconds())
	}
	gauge(c.started, float64(s.Started.UnixNano())/1e9)
	if !s.EndTime.IsZero() {
		gauge(c.endTime, float64(s.EndTime.Unix()))
		gauge(c.remaining, max(0, s.EndTime.Sub(now).Seconds()))
	}
	wall := now.Sub(s.Started)
	ch <- prometheus.MustNewConstMetric(c.gpuSeconds, prometheus.CounterValue, wall.Seconds()*float64(s.GPUs))
	ch <- prometheus.MustNewConstMetric(c.serviceUnits, prometheus.CounterValue, slurm.ServiceUnits(wall, s.GPUs, s.SUFactor))
	gauge(c.suFactor, s.SUFactor)
	gauge(c.gpus, float64(s.GPUs))
	for _, phase := range slices.Sorted(maps.Keys(s.Preps)) {
		p := s.Preps[phase]
		gauge(c.prepBytes, float64(p.Bytes), phase)
		gauge(c.prepSize, float64(p.Total), phase)
		gauge(c.prepSeconds, p.Seconds, phase)
		rate := 0.0
		if p.Seconds > 0 {
			rate = float64(p.Bytes) / p.Seconds
		}
		gauge(c.prepRate, rate, phase)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
