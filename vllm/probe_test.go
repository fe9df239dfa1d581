package vllm

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// engine is a stand-in with switchable health and model list.
type engine struct {
	health atomic.Int32
	models atomic.Value
	key    string
}

func newEngine(t *testing.T, key string) (*engine, *httptest.Server) {
	e := &engine{key: key}
	e.health.Store(200)
	e.models.Store(`{"data":[{"id":"tiny"}]}`)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/health":
			w.WriteHeader(int(e.health.Load()))
		case "/v1/models":
			if r.Header.Get("Authorization") != "Bearer "+e.key {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			w.Write([]byte(e.models.Load().(string)))
		}
	}))
	t.Cleanup(srv.Close)
	return e, srv
}

func TestReady(t *testing.T) {
	e, srv := newEngine(t, "k")
	probe := Probe{BaseURL: srv.URL, APIKey: "k"}
	ctx := context.Background()
	require.NoError(t, probe.Ready(ctx, "tiny"))

	err := probe.Ready(ctx, "other")
	assert.ErrorIs(t, err, ErrNotReady)
	assert.ErrorContains(t, err, `lists [tiny], not "other"`)

	e.health.Store(503)
	err = probe.Ready(ctx, "tiny")
	assert.ErrorIs(t, err, ErrNotReady)
	assert.ErrorContains(t, err, "status 503")
	e.health.Store(200)

	e.models.Store("not json")
	assert.ErrorContains(t, probe.Ready(ctx, "tiny"), "list models")

	assert.ErrorContains(t, Probe{BaseURL: srv.URL, APIKey: "wrong"}.Ready(ctx, "tiny"), "status 401")
	assert.Error(t, Probe{BaseURL: "http://127.0.0.1:1"}.Health(ctx))
	_, err = Probe{BaseURL: "http://127.0.0.1:1"}.Models(ctx)
	assert.Error(t, err)
	assert.Error(t, Probe{BaseURL: "::bad"}.Health(ctx))
	_, err = Probe{BaseURL: "::bad"}.Models(ctx)
	assert.Error(t, err)
}
