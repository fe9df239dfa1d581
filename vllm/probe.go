package vllm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
)

// ErrNotReady is wrapped by readiness failures.
var ErrNotReady = errors.New("engine not ready")

// Probe asks one vLLM engine (OpenAI-compatible server) whether it is alive and serving.
type Probe struct {
	// BaseURL is the engine's root, "http://host:port".
	BaseURL string
	// APIKey is sent as a bearer token to /v1 routes.
	APIKey string
	// Client makes the requests; nil means a client without a timeout, so the context decides.
	Client *http.Client
}

func (e Probe) client() *http.Client {
	if e.Client != nil {
		return e.Client
	}
	return http.DefaultClient
}

// Health asks /health, which vLLM answers 200 while the engine is alive and 503 once it is dead.
func (e Probe) Health(ctx context.Context) error {
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
func (e Probe) Models(ctx context.Context) ([]string, error) {
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
func (e Probe) Ready(ctx context.Context, model string) error {
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
