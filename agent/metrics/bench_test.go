package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llm-agent/llm-agent/vllm"
)

// smallExposition is an engine's exposition of one family.
const smallExposition = "# HELP vllm:num_requests_running Running.\n# TYPE vllm:num_requests_running gauge\n" +
	"vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3\n"

// BenchmarkScrapeHead measures one scrape of each of a head's two paths: /metrics (the agent's
// own collectors and the children's process figures) and /metrics/engine (a real vLLM's
// exposition, about 50 KB, passed through from an engine that costs nothing).
func BenchmarkScrapeHead(b *testing.B) {
	real, err := os.ReadFile("../../vllm/testdata/vllm-0.32.0-cpu-metrics.txt")
	if err != nil {
		b.Fatal(err)
	}
	engine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(real)
	}))
	defer engine.Close()
	s := NewState("n", "1", "head", 8, 1, time.Now(), time.Now().Add(time.Hour))
	s.SetChild("vllm", "running", time.Now())
	s.SetChild("ray", "running", time.Now())
	s.SetPID("vllm", os.Getppid()) // a small tree: the go command's, this test binary below it
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewAgentCollector(s, nil), NewProcessCollector(s, nil, nil))
	srv := httptest.NewServer(Handler(reg, s, map[string]http.Handler{
		"GET " + vllm.EngineMetricsPath: vllm.MetricsHandler(engine.URL, nil, time.Second, hclog.NewNullLogger())}))
	defer srv.Close()
	for _, path := range []string{"/metrics", vllm.EngineMetricsPath} {
		b.Run(path, func(b *testing.B) {
			c := &http.Client{}
			for b.Loop() {
				resp, err := c.Get(srv.URL + path)
				if err != nil || resp.StatusCode != http.StatusOK {
					b.Fatal(path, err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
}
