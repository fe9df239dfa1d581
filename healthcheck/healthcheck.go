// Package healthcheck probes the engine over HTTP: readiness (healthy and serving the model) and
// liveness (healthy, judged over several probes because a busy engine answers slowly).
package healthcheck

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"
)

// ErrNotReady is wrapped by readiness failures.
var ErrNotReady = errors.New("engine not ready")

// Engine probes one OpenAI-compatible engine.
type Engine struct {
	// BaseURL is the engine's root, "http://host:port".
	BaseURL string
	// APIKey is sent as a bearer token to /v1 routes.
	APIKey string
	// Client makes the requests; nil means a client without a timeout, so the context decides.
	Client *http.Client
}

func (e Engine) client() *http.Client {
	if e.Client != nil {
		return e.Client
	}
	return http.DefaultClient
}

// Health asks /health, which vLLM answers 200 while the engine is alive and 503 once it is dead.
func (e Engine) Health(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.BaseURL+"/health", nil)
	if err != nil {
		return fmt.Errorf("probe %s/health: %w", e.BaseURL, err)
	}
	resp, err := e.client().Do(req)
	if err != nil {
		return fmt.Errorf("probe %s/health: %w", e.BaseURL, err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("probe %s/health: status %d", e.BaseURL, resp.StatusCode)
	}
	return nil
}

// Models lists the model ids /v1/models serves.
func (e Engine) Models(ctx context.Context) ([]string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.BaseURL+"/v1/models", nil)
	if err != nil {
		return nil, fmt.Errorf("list models at %s: %w", e.BaseURL, err)
	}
	if e.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+e.APIKey)
	}
	resp, err := e.client().Do(req)
	if err != nil {
		return nil, fmt.Errorf("list models at %s: %w", e.BaseURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("list models at %s: status %d", e.BaseURL, resp.StatusCode)
	}
	var body struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&body); err != nil {
		return nil, fmt.Errorf("list models at %s: %w", e.BaseURL, err)
	}
	ids := make([]string, 0, len(body.Data))
	for _, m := range body.Data {
		ids = append(ids, m.ID)
	}
	return ids, nil
}

// Ready reports nil when /health answers 200 and /v1/models lists model.
func (e Engine) Ready(ctx context.Context, model string) error {
	if err := e.Health(ctx); err != nil {
		return fmt.Errorf("%w: %w", ErrNotReady, err)
	}
	ids, err := e.Models(ctx)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNotReady, err)
	}
	if !slices.Contains(ids, model) {
		return fmt.Errorf("%w: /v1/models lists %v, not %q", ErrNotReady, ids, model)
	}
	return nil
}

// WaitReady polls check every interval until it returns nil or ctx ends; it returns the last
// check error with the context's.
func WaitReady(ctx context.Context, interval time.Duration, check func(ctx context.Context) error) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var last error
	for {
		if last = check(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last check: %w)", ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// Liveness probes on an interval and reports when Failures probes in a row have failed.
type Liveness struct {
	// Probe is one liveness check.
	Probe func(ctx context.Context) error
	// Interval is the time between the end of one probe and the start of the next.
	Interval time.Duration
	// Timeout bounds one probe; make it long, since a loaded engine answers slowly.
	Timeout time.Duration
	// Failures is how many failures in a row make the engine unhealthy.
	Failures int
	// OnUnhealthy is called once per run of Failures failures, with the last error.
	OnUnhealthy func(err error)
	// OnProbe, if set, is told of every probe's outcome.
	OnProbe func(err error)
}

// Run probes until ctx ends.
func (l Liveness) Run(ctx context.Context) {
	failed := 0
	timer := time.NewTimer(l.Interval)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		pctx, cancel := context.WithTimeout(ctx, l.Timeout)
		err := l.Probe(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if l.OnProbe != nil {
			l.OnProbe(err)
		}
		if err == nil {
			failed = 0
		} else if failed++; failed >= l.Failures {
			failed = 0
			l.OnUnhealthy(fmt.Errorf("%d liveness probes failed in a row; last: %w", l.Failures, err))
		}
		timer.Reset(l.Interval)
	}
}
