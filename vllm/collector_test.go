package vllm

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const vllmExposition = `# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 3
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="tiny"} 1234
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="tiny"} 2
vllm:time_to_first_token_seconds_bucket{engine="0",le="1",model_name="tiny"} 5
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="tiny"} 6
vllm:time_to_first_token_seconds_sum{engine="0",model_name="tiny"} 4.5
vllm:time_to_first_token_seconds_count{engine="0",model_name="tiny"} 6
# HELP vllm:some_summary A summary.
# TYPE vllm:some_summary summary
vllm:some_summary{quantile="0.5"} 1
vllm:some_summary_sum 10
vllm:some_summary_count 4
# TYPE vllm:untyped_thing untyped
vllm:untyped_thing{job="theirs"} 7
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 100
`

func TestEngineCollectorReexports(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(vllmExposition))
	}))
	defer srv.Close()
	c := NewCollector(srv.URL, nil, "vllm:", "node1", "42", time.Second)
	want := `
# HELP llm_agent_engine_scrape_success 1 if the last fetch of the engine's /metrics worked.
# TYPE llm_agent_engine_scrape_success gauge
llm_agent_engine_scrape_success{job="42",node="node1"} 1
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",job="42",model_name="tiny",node="node1"} 1234
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",job="42",model_name="tiny",node="node1"} 3
# HELP vllm:some_summary A summary.
# TYPE vllm:some_summary summary
vllm:some_summary{job="42",node="node1",quantile="0.5"} 1
vllm:some_summary_sum{job="42",node="node1"} 10
vllm:some_summary_count{job="42",node="node1"} 4
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",job="42",model_name="tiny",node="node1",le="0.1"} 2
vllm:time_to_first_token_seconds_bucket{engine="0",job="42",model_name="tiny",node="node1",le="1"} 5
vllm:time_to_first_token_seconds_bucket{engine="0",job="42",model_name="tiny",node="node1",le="+Inf"} 6
vllm:time_to_first_token_seconds_sum{engine="0",job="42",model_name="tiny",node="node1"} 4.5
vllm:time_to_first_token_seconds_count{engine="0",job="42",model_name="tiny",node="node1"} 6
# HELP vllm:untyped_thing 
# TYPE vllm:untyped_thing untyped
vllm:untyped_thing{job="42",node="node1"} 7
`
	require.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(want),
		"llm_agent_engine_scrape_success", "vllm:generation_tokens_total", "vllm:num_requests_running",
		"vllm:some_summary", "vllm:time_to_first_token_seconds", "vllm:untyped_thing"))
	n, err := testutil.GatherAndCount(registry(c), "python_gc_objects_collected_total")
	require.NoError(t, err)
	assert.Zero(t, n, "only the engine's own vllm: families")
}

func TestEngineCollectorFailureDoesNotFailScrape(t *testing.T) {
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // a hung engine
	}))
	defer slow.Close()
	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("vllm:bad{ 1\n"))
	}))
	defer broken.Close()
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer down.Close()
	huge := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		line := []byte("vllm:x 1\n")
		for n := 0; n <= maxEngineBody; n += len(line) {
			if _, err := w.Write(line); err != nil {
				return
			}
		}
	}))
	defer huge.Close()
	for name, url := range map[string]string{"hung": slow.URL, "unparseable": broken.URL, "503": down.URL, "too big": huge.URL,
		"refused": "http://127.0.0.1:1/metrics", "bad url": "::"} {
		t.Run(name, func(t *testing.T) {
			c := NewCollector(url, nil, "vllm:", "n", "j", 100*time.Millisecond)
			start := time.Now()
			reg := registry(c)
			families, err := reg.Gather()
			require.NoError(t, err, "a failed fetch never fails the agent's scrape")
			assert.Less(t, time.Since(start), 2*time.Second, "bounded by the short timeout")
			var got float64 = -1
			for _, f := range families {
				if f.GetName() == "llm_agent_engine_scrape_success" {
					got = f.GetMetric()[0].GetGauge().GetValue()
				}
			}
			assert.Equal(t, 0.0, got)
		})
	}
}

// A real vLLM's /metrics (vLLM 0.32.0, CPU build, the tiny model after three completions):
// every vllm: sample is re-exported with its labels, value, node and job, and nothing else is.
func TestEngineCollectorRealVLLM(t *testing.T) {
	body, err := os.ReadFile("testdata/vllm-0.32.0-cpu-metrics.txt")
	require.NoError(t, err)
	parser := expfmt.NewTextParser(model.LegacyValidation)
	want, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	require.NoError(t, err)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) }))
	defer srv.Close()
	got, err := registry(NewCollector(srv.URL, nil, "vllm:", "node1", "42", time.Second)).Gather()
	require.NoError(t, err)

	// A sample's identity: its family, labels and value, as text.
	samples := func(f *dto.MetricFamily, extra ...string) []string {
		var out []string
		for _, m := range f.GetMetric() {
			labels := append([]string(nil), extra...)
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(labels)
			out = append(out, fmt.Sprint(f.GetName(), labels, m.GetCounter().GetValue(), m.GetGauge().GetValue(),
				m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum(), len(m.GetHistogram().GetBucket())))
		}
		sort.Strings(out)
		return out
	}
	var wantSamples, gotSamples []string
	foreign := 0
	for name, f := range want {
		if strings.HasPrefix(name, "vllm:") {
			wantSamples = append(wantSamples, samples(f, "job=42", "node=node1")...)
		} else {
			foreign++
		}
	}
	for _, f := range got {
		if strings.HasPrefix(f.GetName(), "vllm:") {
			gotSamples = append(gotSamples, samples(f)...)
		} else {
			assert.True(t, strings.HasPrefix(f.GetName(), "llm_agent_engine_scrape_"), "unexpected family %s", f.GetName())
		}
	}
	sort.Strings(wantSamples)
	sort.Strings(gotSamples)
	require.Greater(t, len(wantSamples), 50, "the fixture holds vLLM's series")
	require.Positive(t, foreign, "the fixture holds other families too")
	assert.Equal(t, wantSamples, gotSamples)
}

func TestKeepFamilies(t *testing.T) {
	for _, tc := range []struct{ name, prefix, in, want string }{
		{"keeps the prefix's samples and comments", "vllm:",
			"# HELP vllm:a A.\n# TYPE vllm:a gauge\nvllm:a{x=\"1\"} 2\n# HELP py_gc G.\n# TYPE py_gc counter\npy_gc 3\n",
			"# HELP vllm:a A.\n# TYPE vllm:a gauge\nvllm:a{x=\"1\"} 2\n"},
		{"drops other comments and blank lines", "vllm:", "# a comment\n\nvllm:b 1\n", "vllm:b 1\n"},
		{"a last line without a newline", "vllm:", "py 1\nvllm:c 2", "vllm:c 2"},
		{"a name that only contains the prefix", "vllm:", "x_vllm:d 1\n", ""},
		{"no prefix keeps everything", "", "py 1\nvllm:e 2\n", "py 1\nvllm:e 2\n"},
		{"empty", "vllm:", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, string(keepFamilies([]byte(tc.in), tc.prefix)))
		})
	}
}

// A malformed line in a family the agent drops does not cost the engine's own families.
func TestEngineCollectorIgnoresForeignGarbage(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("python_broken{ 1\n# TYPE vllm:ok gauge\nvllm:ok 5\n"))
	}))
	defer srv.Close()
	c := NewCollector(srv.URL, nil, "vllm:", "n", "j", time.Second)
	require.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(`
# HELP llm_agent_engine_scrape_success 1 if the last fetch of the engine's /metrics worked.
# TYPE llm_agent_engine_scrape_success gauge
llm_agent_engine_scrape_success{job="j",node="n"} 1
# HELP vllm:ok 
# TYPE vllm:ok gauge
vllm:ok{job="j",node="n"} 5
`), "llm_agent_engine_scrape_success", "vllm:ok"))
}

func registry(c prometheus.Collector) *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(c)
	return r
}
