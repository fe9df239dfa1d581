package vllm

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// scrape gets h's answer the way Prometheus asks.
func scrape(t *testing.T, h http.Handler, accept string) *http.Response {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, EngineMetricsPath, nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	req.Header.Set("Accept-Encoding", "gzip")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Result()
}

// TestMetricsHandlerPassesTheEngineThrough: a real vLLM's exposition, from an engine on a Unix
// socket as behind the gateway, arrives byte for byte with its content type; the scraper's
// Accept header reaches the engine, its Accept-Encoding does not.
func TestMetricsHandlerPassesTheEngineThrough(t *testing.T) {
	body, err := os.ReadFile("testdata/vllm-0.32.0-cpu-metrics.txt")
	require.NoError(t, err)
	sock := filepath.Join(t.TempDir(), "engine.sock")
	ln, err := net.Listen("unix", sock)
	require.NoError(t, err)
	var gotAccept, gotEncoding string
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		require.Equal(t, "/metrics", r.URL.Path)
		gotAccept, gotEncoding = r.Header.Get("Accept"), r.Header.Get("Accept-Encoding")
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		w.Write(body)
	})}
	go srv.Serve(ln)
	defer srv.Close()

	e := Endpoint{Socket: sock}
	h := MetricsHandler(e.BaseURL()+"/metrics", e.Transport(1), time.Second, hclog.NewNullLogger())
	resp := scrape(t, h, "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "text/plain; version=0.0.4; charset=utf-8", resp.Header.Get("Content-Type"))
	got, _ := io.ReadAll(resp.Body)
	assert.Equal(t, string(body), string(got))
	assert.Equal(t, "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5", gotAccept)
	assert.NotContains(t, gotEncoding, "gzip", "the hop on the node is not compressed")
	for _, name := range MetricNames {
		assert.Contains(t, string(got), "# TYPE "+name+" ", "the fixture carries %s", name)
	}
}

// TestMetricsHandlerFailsClosed: an engine that is down, answers an error, or hangs past the
// timeout gives the scraper a 503 that names nothing of the node.
func TestMetricsHandlerFailsClosed(t *testing.T) {
	hang := make(chan struct{})
	defer close(hang)
	cases := map[string]http.HandlerFunc{
		"error": func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "Internal error at /secret/path", http.StatusInternalServerError)
		},
		"hang": func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-hang:
			case <-r.Context().Done():
			}
		},
	}
	for name, engine := range cases {
		t.Run(name, func(t *testing.T) {
			srv := httptest.NewServer(engine)
			defer srv.Close()
			start := time.Now()
			resp := scrape(t, MetricsHandler(srv.URL+"/metrics", nil, 200*time.Millisecond, hclog.NewNullLogger()), "")
			assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
			b, _ := io.ReadAll(resp.Body)
			assert.Equal(t, "engine metrics unavailable\n", string(b))
			assert.Less(t, time.Since(start), 5*time.Second)
		})
	}
	t.Run("down", func(t *testing.T) {
		e := Endpoint{Socket: filepath.Join(t.TempDir(), "gone.sock")}
		resp := scrape(t, MetricsHandler(e.BaseURL()+"/metrics", e.Transport(1), time.Second, hclog.NewNullLogger()), "")
		assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
		b, _ := io.ReadAll(resp.Body)
		assert.False(t, strings.Contains(string(b), "gone.sock"), "no path on a public port")
	})
}
