package gateway

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// BenchmarkProxy measures one authenticated, audited, non-streamed request through the
// gateway to a trivial engine, in parallel.
func BenchmarkProxy(b *testing.B) {
	_, socket := socketEngine(b, b.TempDir(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"object":"chat.completion","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}`))
	}))
	set, _ := NewKeySet([]Key{{Name: "alice", Project: "p", Key: aliceKey}})
	keys, _ := NewKeys("", set, hclog.NewNullLogger())
	audit, _ := OpenAudit(filepath.Join(b.TempDir(), AuditFile))
	gw := New(Options{Engine: socket, EngineKey: engineKey, Keys: keys, Ready: func() (bool, string) { return true, "" },
		Audit: audit, Metrics: NewMetrics("n", "j")})
	srv := httptest.NewServer(gw.Handler())
	defer srv.Close()
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
