package service

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// wakeBuckets span a cold start: seconds in an idle queue to an hour behind a full one.
var wakeBuckets = []float64{5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600}

// coldStart is how long this job, queued by a wake, took: from the wake's submission until it
// ran, and until it served.
type coldStart struct {
	mu             sync.Mutex
	running, ready time.Duration
	known          bool
}

// Collector exports the service's settings and, for a job a wake queued, its cold start, as
// the node's metrics port serves them.
func (s *Service) Collector(node, job string) prometheus.Collector {
	consts := prometheus.Labels{"node": node, "job": job, "service": s.name}
	return &collector{s: s,
		idle: prometheus.NewDesc("llm_agent_service_idle_release_seconds",
			"The service's --idle-release: how long with no request before its job releases the allocation (0: never).", nil, consts),
		wake: prometheus.NewDesc("llm_agent_service_wake_seconds",
			"A woken job's cold start, from the wake's submission until the job ran (until=\"running\": the queue's wait) and until it served (until=\"ready\").",
			[]string{"until"}, consts),
		jobs: prometheus.NewDesc("llm_agent_service_jobs",
			"The service's jobs under --max-jobs, the serving one included: current (running or queued, at the last sample) and desired (after the last decision).",
			[]string{"kind"}, consts),
		signal: prometheus.NewDesc("llm_agent_service_scale_signal",
			"The requests waiting per engine, averaged over --scale-window, at the last sample.", nil, consts),
		decisions: prometheus.NewDesc("llm_agent_service_scale_decisions_total",
			"Jobs added (action=\"up\") and drained (action=\"down\") by this serving job.", []string{"action"}, consts)}
}

type collector struct {
	s                                   *Service
	idle, wake, jobs, signal, decisions *prometheus.Desc
}

var _ prometheus.Collector = (*collector)(nil)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.idle, c.wake, c.jobs, c.signal, c.decisions} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.idle, prometheus.GaugeValue, c.s.cfg.IdleRelease.Seconds())
	if sc := c.s.scaler; sc != nil {
		sc.mu.Lock()
		ch <- prometheus.MustNewConstMetric(c.jobs, prometheus.GaugeValue, float64(max(1, sc.jobs)), "current")
		ch <- prometheus.MustNewConstMetric(c.jobs, prometheus.GaugeValue, float64(max(1, sc.last.Desired)), "desired")
		ch <- prometheus.MustNewConstMetric(c.signal, prometheus.GaugeValue, sc.last.Signal)
		ch <- prometheus.MustNewConstMetric(c.decisions, prometheus.CounterValue, float64(sc.ups), "up")
		ch <- prometheus.MustNewConstMetric(c.decisions, prometheus.CounterValue, float64(sc.down), "down")
		sc.mu.Unlock()
	}
	cs := &c.s.cold
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if !cs.known {
		return
	}
	for until, d := range map[string]time.Duration{"running": cs.running, "ready": cs.ready} {
		buckets := map[float64]uint64{}
		for _, b := range wakeBuckets {
			if d.Seconds() <= b {
				buckets[b] = 1
			} else {
				buckets[b] = 0
			}
		}
		ch <- prometheus.MustNewConstHistogram(c.wake, 1, d.Seconds(), buckets, until)
	}
}
