package gateway

import (
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the gateway's per-key series.
type Metrics struct {
	requests *prometheus.CounterVec
	tokens   *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	ttft     *prometheus.HistogramVec
	// throttled counts the requests a key's own limit answered 429.
	throttled *prometheus.CounterVec
	// lastRequest is when the last request with a valid key arrived: time() minus it is how
	// long the service has been idle (--idle-release goes by the same clock).
	lastRequest prometheus.Gauge
	// audit is the audit log whose troubles are exported (BindAudit).
	audit                                atomic.Pointer[Audit]
	auditErrors, auditPending, auditLost *prometheus.Desc
}

var _ prometheus.Collector = (*Metrics)(nil)

// NewMetrics returns the gateway's series, labelled with node and job, as one collector.
func NewMetrics(node, job string) *Metrics {
	consts := prometheus.Labels{"node": node, "job": job}
	buckets := []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llm_agent_gateway_requests_total",
			Help: "Requests through the gateway by key, project, endpoint and HTTP status.", ConstLabels: consts},
			[]string{"key", "project", "endpoint", "code"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llm_agent_gateway_tokens_total",
			Help: "Tokens by key and project, from the engine's usage: prompt or completion.", ConstLabels: consts},
			[]string{"key", "project", "kind"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "llm_agent_gateway_request_duration_seconds",
			Help: "Time from request to the end of the response, by key, project and endpoint.", ConstLabels: consts, Buckets: buckets},
			[]string{"key", "project", "endpoint"}),
		ttft: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "llm_agent_gateway_time_to_first_token_seconds",
			Help: "Time to the first streamed chunk, by key and project.", ConstLabels: consts, Buckets: buckets},
			[]string{"key", "project"}),
		throttled: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llm_agent_gateway_throttled_total",
			Help: "Requests answered 429 by the key's own limit: requests_per_minute, tokens_per_minute or max_in_flight.", ConstLabels: consts},
			[]string{"key", "project", "limit"}),
		lastRequest: prometheus.NewGauge(prometheus.GaugeOpts{Name: "llm_agent_gateway_last_request_timestamp_seconds",
			Help: "When the last request with a valid key arrived (Unix time; the gateway's start before any); time() minus it is the idle time.", ConstLabels: consts}),
	}
	m.lastRequest.SetToCurrentTime()
	m.auditErrors = prometheus.NewDesc("llm_agent_gateway_audit_write_errors_total",
		"Writes and fsyncs of the audit log that failed (a full disk): the records wait in memory and are written once the disk takes them.", nil, consts)
	m.auditPending = prometheus.NewDesc("llm_agent_gateway_audit_pending_bytes",
		"Audit records waiting in memory to be written to the audit log.", nil, consts)
	m.auditLost = prometheus.NewDesc("llm_agent_gateway_audit_dropped_total",
		"Audit records dropped because too many waited for a full disk (64 MiB): the only records the audit log ever loses.", nil, consts)
	return m
}

// BindAudit exports a's troubles with the gateway's series.
func (m *Metrics) BindAudit(a *Audit) { m.audit.Store(a) }

// Describe sends the series' descriptions.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.requests.Describe(ch)
	m.tokens.Describe(ch)
	m.latency.Describe(ch)
	m.ttft.Describe(ch)
	m.throttled.Describe(ch)
	m.lastRequest.Describe(ch)
	ch <- m.auditErrors
	ch <- m.auditPending
	ch <- m.auditLost
}

// Collect sends the series.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.requests.Collect(ch)
	m.tokens.Collect(ch)
	m.latency.Collect(ch)
	m.ttft.Collect(ch)
	m.throttled.Collect(ch)
	m.lastRequest.Collect(ch)
	if a := m.audit.Load(); a != nil {
		st := a.Stats()
		ch <- prometheus.MustNewConstMetric(m.auditErrors, prometheus.CounterValue, float64(st.Failures))
		ch <- prometheus.MustNewConstMetric(m.auditPending, prometheus.GaugeValue, float64(st.Pending))
		ch <- prometheus.MustNewConstMetric(m.auditLost, prometheus.CounterValue, float64(st.Dropped))
	}
}

func (m *Metrics) observe(x *exchange, latency time.Duration) {
	if x.throttledBy != "" {
		m.throttled.WithLabelValues(x.key.Name, x.key.Project, x.throttledBy).Inc()
	}
	key, project := x.key.Name, x.key.Project
	if key == "" {
		key = "unauthenticated"
	}
	m.requests.WithLabelValues(key, project, x.endpoint, strconv.Itoa(x.status)).Inc()
	if x.key.Name == "" {
		return
	}
	m.latency.WithLabelValues(key, project, x.endpoint).Observe(latency.Seconds())
	if x.prompt > 0 {
		m.tokens.WithLabelValues(key, project, "prompt").Add(float64(x.prompt))
	}
	if x.complete > 0 {
		m.tokens.WithLabelValues(key, project, "completion").Add(float64(x.complete))
	}
	if x.stream && x.ttft > 0 {
		m.ttft.WithLabelValues(key, project).Observe(x.ttft.Seconds())
	}
}

// ReplicaCollector exports each replica's state: in the rotation or not, requests in flight,
// and requests routed to it.
type ReplicaCollector struct {
	g                    atomic.Pointer[Gateway]
	up, inFlight, routed *prometheus.Desc
}

var _ prometheus.Collector = (*ReplicaCollector)(nil)

// NewReplicaCollector returns the replica series, labelled with node and job, of the gateway
// Bind gives it; none before. Each series names the replica (its node) and its served model.
func NewReplicaCollector(node, job string) *ReplicaCollector {
	consts := prometheus.Labels{"node": node, "job": job}
	desc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, []string{"replica", "model"}, consts)
	}
	return &ReplicaCollector{
		up:       desc("llm_agent_gateway_replica_up", "1 while the replica (an engine, named by its node) is in the gateway's rotation."),
		inFlight: desc("llm_agent_gateway_replica_in_flight", "Requests the gateway has in flight on the replica."),
		routed:   desc("llm_agent_gateway_replica_requests_total", "Requests the gateway sent to the replica."),
	}
}

// Bind makes the collector export g's replicas.
func (c *ReplicaCollector) Bind(g *Gateway) { c.g.Store(g) }

// Describe sends the series' descriptions.
func (c *ReplicaCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.up
	ch <- c.inFlight
	ch <- c.routed
}

// Collect sends the series.
func (c *ReplicaCollector) Collect(ch chan<- prometheus.Metric) {
	g := c.g.Load()
	if g == nil {
		return
	}
	for _, r := range g.Replicas() {
		up := 0.0
		if r.Up() {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up, r.Name, r.Model)
		ch <- prometheus.MustNewConstMetric(c.inFlight, prometheus.GaugeValue, float64(r.InFlight()), r.Name, r.Model)
		ch <- prometheus.MustNewConstMetric(c.routed, prometheus.CounterValue, float64(r.Routed()), r.Name, r.Model)
	}
}
