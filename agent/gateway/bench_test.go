package gateway

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/llm-agent/llm-agent/vllm"
)

// benchGateway serves, for a benchmark, a gateway with one key, its audit log and metrics in
// front of the engine at socket.
func benchGateway(b *testing.B, socket vllm.Endpoint) *httptest.Server {
	set, _ := NewKeySet([]Key{{Name: "alice", Project: "p", Key: aliceKey}})
	keys, _ := NewKeys("", set, hclog.NewNullLogger())
	audit, _ := OpenAudit(filepath.Join(b.TempDir(), AuditFile))
	gw := New(Options{Engine: socket, EngineKey: engineKey, Keys: keys, Ready: func() (bool, string) { return true, "" },
		Audit: audit, Metrics: NewMetrics("n", "j")})
	srv := httptest.NewServer(gw.Handler())
	b.Cleanup(srv.Close)
	return srv
}

// BenchmarkProxy measures one authenticated, audited, non-streamed request through the
// gateway to a trivial engine, in parallel.
func BenchmarkProxy(b *testing.B) {
	_, socket := socketEngine(b, b.TempDir(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"object":"chat.completion","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}`))
	}))
	srv := benchGateway(b, socket)
	body := []byte(`{"model":"tiny","messages":[{"role":"user","content":"hello there"}],"max_tokens":16}`)
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	c := &http.Client{Transport: tr}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/chat/completions", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+aliceKey)
			resp, err := c.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}

// BenchmarkProxyStream measures one streamed request of 32 chunks through the gateway, as vLLM
// sends them when asked for usage: each chunk says "usage":null, the last carries the counts.
func BenchmarkProxyStream(b *testing.B) {
	chunk := []byte(`data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"tiny","choices":[{"index":0,"text":" hi","logprobs":null,"finish_reason":null,"stop_reason":null}],"usage":null}` + "\n\n")
	_, socket := socketEngine(b, b.TempDir(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		f := w.(http.Flusher)
		for range 32 {
			w.Write(chunk)
			f.Flush()
		}
		w.Write([]byte(`data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"tiny","choices":[],"usage":{"prompt_tokens":64,"total_tokens":96,"completion_tokens":32}}` + "\n\ndata: [DONE]\n\n"))
	}))
	srv := benchGateway(b, socket)
	body := []byte(`{"model":"tiny","prompt":"hello there","max_tokens":32,"stream":true,"stream_options":{"include_usage":true}}`)
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/completions", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+aliceKey)
			resp, err := c.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			n, _ := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if n < int64(32*len(chunk)) {
				b.Fatalf("a stream of %d bytes", n)
			}
		}
	})
}
