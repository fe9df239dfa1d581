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
			[]string{"until"}, consts)}
}

type collector struct {
	s          *Service
	idle, wake *prometheus.Desc
}

var _ prometheus.Collector = (*collector)(nil)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.idle
	ch <- c.wake
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.idle, prometheus.GaugeValue, c.s.cfg.IdleRelease.Seconds())
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
