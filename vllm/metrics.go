package vllm

import (
	"context"
	"io"
	"net/http"
	"time"

	"github.com/hashicorp/go-hclog"
)

// EngineMetricsPath is where a head's metrics port serves the engine's own /metrics, for
// Prometheus to scrape as a target of its own (targets.json lists it with the job's labels).
const EngineMetricsPath = "/metrics/engine"

// maxEngineBody bounds what one fetch passes on; a real vLLM's /metrics is about 50 KB.
const maxEngineBody = 16 << 20

// MetricsHandler serves the engine's /metrics at url, fetched through tr (the engine's socket,
// for one), as the engine wrote it: the agent neither parses nor re-encodes it, so a scrape
// costs what the engine's own costs plus one copy. The scraper's Accept header goes through,
// so it gets the format it asked for; compression does not, as the hop is on the node. A fetch
// that fails or times out answers 503 with no detail: the port is open to the cluster network,
// and the scraper's up metric says enough.
func MetricsHandler(url string, tr http.RoundTripper, timeout time.Duration, log hclog.Logger) http.Handler {
	client := &http.Client{Transport: tr}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			http.Error(w, "engine metrics unavailable", http.StatusServiceUnavailable)
			return
		}
		if a := r.Header.Get("Accept"); a != "" {
			req.Header.Set("Accept", a)
		}
		resp, err := client.Do(req)
		if err != nil {
			log.Debug("engine metrics", "error", err)
			http.Error(w, "engine metrics unavailable", http.StatusServiceUnavailable)
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			log.Debug("engine metrics", "status", resp.StatusCode)
			http.Error(w, "engine metrics unavailable", http.StatusServiceUnavailable)
			return
		}
		if ct := resp.Header.Get("Content-Type"); ct != "" {
			w.Header().Set("Content-Type", ct)
		}
		if n, err := io.Copy(w, io.LimitReader(resp.Body, maxEngineBody)); err != nil || n == maxEngineBody {
			// Mid-body the status is sent; a cut-off exposition fails the scraper's parse.
			log.Debug("engine metrics cut off", "bytes", n, "error", err)
		}
	})
}
