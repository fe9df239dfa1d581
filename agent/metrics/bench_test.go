package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llm-agent/llm-agent/vllm"
)

// smallExposition is an engine's exposition of one family.
const smallExposition = "# HELP vllm:num_requests_running Running.\n# TYPE vllm:num_requests_running gauge\n" +
	"vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3\n"

// BenchmarkScrapeHead measures one scrape of a head's /metrics: the agent's own collector and
// the engine's metrics fetched over HTTP and re-exported, for a small exposition and for a real
// vLLM's (about 50 KB, a sixth of it Python, process and HTTP families).
func BenchmarkScrapeHead(b *testing.B) {
	real, err := os.ReadFile("../../vllm/testdata/vllm-0.32.0-cpu-metrics.txt")
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		body []byte
	}{{"small", []byte(smallExposition)}, {"real-vllm", real}} {
		b.Run(bc.name, func(b *testing.B) {
			engine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Write(bc.body)
			}))
			defer engine.Close()
			s := NewState("n", "1", "head", 8, 1, time.Now(), time.Now().Add(time.Hour))
			s.SetChild("vllm", "running", time.Now())
			s.SetChild("ray", "running", time.Now())
			reg := prometheus.NewRegistry()
			reg.MustRegister(NewAgentCollector(s, nil), vllm.NewCollector(engine.URL, nil, "vllm:", "n", "1", time.Second))
			srv := httptest.NewServer(Handler(reg, s))
			defer srv.Close()
			c := &http.Client{}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				resp, err := c.Get(srv.URL + "/metrics")
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
}
