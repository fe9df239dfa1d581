package vllm

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Collector re-exports the engine's own metrics (vLLM's "vllm:" families) on the agent's
// port, with node and job labels added. The engine is scraped on every collection with a short
// timeout; a failed fetch only sets the scrape-success gauge to 0.
type Collector struct {
	url     string
	prefix  string
	timeout time.Duration
	client  *http.Client
	node    string
	job     string

	success, duration *prometheus.Desc

	// descs caches the descriptions of the engine's series across scrapes: building one hashes
	// and validates its name and labels, which is most of the re-export's cost.
	descMu sync.Mutex
	descs  map[string]*prometheus.Desc
}

// maxDescs bounds the cache; an engine with label churn only gets the cache rebuilt.
const maxDescs = 10000

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a collector of the families starting with prefix at url, fetched
// through tr (the engine's socket, for one); nil uses a plain TCP transport.
func NewCollector(url string, tr http.RoundTripper, prefix, node, job string, timeout time.Duration) *Collector {
	if tr == nil {
		// The engine is on this node: compression would only cost CPU on both sides.
		tr = &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 1}
	}
	consts := prometheus.Labels{"node": node, "job": job}
	return &Collector{
		url: url, prefix: prefix, timeout: timeout, node: node, job: job, descs: map[string]*prometheus.Desc{},
		client:   &http.Client{Transport: tr},
		success:  prometheus.NewDesc("llm_agent_engine_scrape_success", "1 if the last fetch of the engine's /metrics worked.", nil, consts),
		duration: prometheus.NewDesc("llm_agent_engine_scrape_duration_seconds", "Time the last fetch of the engine's /metrics took.", nil, consts),
	}
}

// Describe sends nothing: the engine's families are not known before they are fetched, so this
// is an unchecked collector (client_golang checks only collectors that describe themselves).
func (c *Collector) Describe(chan<- *prometheus.Desc) {}

// Collect fetches, parses and re-exports the engine's metrics.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	start := time.Now()
	families, err := c.fetch()
	ch <- prometheus.MustNewConstMetric(c.duration, prometheus.GaugeValue, time.Since(start).Seconds())
	if err != nil {
		ch <- prometheus.MustNewConstMetric(c.success, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.success, prometheus.GaugeValue, 1)
	names := make([]string, 0, len(families))
	for name := range families {
		if strings.HasPrefix(name, c.prefix) {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		c.export(ch, families[name])
	}
}

func (c *Collector) fetch() (map[string]*dto.MetricFamily, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("engine metrics: status %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxEngineBody+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxEngineBody {
		return nil, fmt.Errorf("engine metrics: more than %d bytes", maxEngineBody)
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	return parser.TextToMetricFamilies(bytes.NewReader(keepFamilies(body, c.prefix)))
}

// maxEngineBody bounds what one fetch reads; a real vLLM's /metrics is about 50 KB.
const maxEngineBody = 16 << 20

// keepFamilies returns the lines of a text exposition that belong to families starting with
// prefix: their samples and their HELP and TYPE comments. Parsing is most of a re-export's cost,
// and a real vLLM's /metrics also carries Python, process and HTTP families that are dropped
// anyway; a malformed line in those no longer loses the engine's own. It filters in place.
func keepFamilies(body []byte, prefix string) []byte {
	if prefix == "" {
		return body
	}
	name, help, typ := []byte(prefix), []byte("# HELP "+prefix), []byte("# TYPE "+prefix)
	out := body[:0]
	for len(body) > 0 {
		line := body
		if i := bytes.IndexByte(body, '\n'); i >= 0 {
			line, body = body[:i+1], body[i+1:]
		} else {
			body = nil
		}
		if bytes.HasPrefix(line, name) || bytes.HasPrefix(line, help) || bytes.HasPrefix(line, typ) {
			out = append(out, line...)
		}
	}
	return out
}

// desc returns the description of a family's series with the given label names, plus node and
// job.
func (c *Collector) desc(f *dto.MetricFamily, names []string) *prometheus.Desc {
	key := f.GetName() + "\x00" + f.GetHelp() + "\x00" + strings.Join(names, "\x00")
	c.descMu.Lock()
	defer c.descMu.Unlock()
	if d, ok := c.descs[key]; ok {
		return d
	}
	if len(c.descs) >= maxDescs {
		c.descs = map[string]*prometheus.Desc{}
	}
	d := prometheus.NewDesc(f.GetName(), f.GetHelp(), append(names, "node", "job"), nil)
	c.descs[key] = d
	return d
}

// export re-creates one family's samples as constant metrics with node and job added.
func (c *Collector) export(ch chan<- prometheus.Metric, f *dto.MetricFamily) {
	for _, m := range f.GetMetric() {
		var names, values []string
		for _, lp := range m.GetLabel() {
			if lp.GetName() == "node" || lp.GetName() == "job" {
				continue // the agent's own labels win
			}
			names = append(names, lp.GetName())
			values = append(values, lp.GetValue())
		}
		desc := c.desc(f, names)
		values = append(values, c.node, c.job)
		var metric prometheus.Metric
		var err error
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			metric, err = prometheus.NewConstMetric(desc, prometheus.CounterValue, m.GetCounter().GetValue(), values...)
		case dto.MetricType_GAUGE:
			metric, err = prometheus.NewConstMetric(desc, prometheus.GaugeValue, m.GetGauge().GetValue(), values...)
		case dto.MetricType_HISTOGRAM:
			h := m.GetHistogram()
			buckets := map[float64]uint64{}
			for _, b := range h.GetBucket() {
				buckets[b.GetUpperBound()] = b.GetCumulativeCount()
			}
			metric, err = prometheus.NewConstHistogram(desc, h.GetSampleCount(), h.GetSampleSum(), buckets, values...)
		case dto.MetricType_SUMMARY:
			s := m.GetSummary()
			quantiles := map[float64]float64{}
			for _, q := range s.GetQuantile() {
				quantiles[q.GetQuantile()] = q.GetValue()
			}
			metric, err = prometheus.NewConstSummary(desc, s.GetSampleCount(), s.GetSampleSum(), quantiles, values...)
		default:
			metric, err = prometheus.NewConstMetric(desc, prometheus.UntypedValue, m.GetUntyped().GetValue(), values...)
		}
		if err == nil {
			ch <- metric
		}
	}
}
