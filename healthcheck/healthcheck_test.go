package healthcheck

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

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
	probe := Engine{BaseURL: srv.URL, APIKey: "k"}
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

	assert.ErrorContains(t, Engine{BaseURL: srv.URL, APIKey: "wrong"}.Ready(ctx, "tiny"), "status 401")
	assert.Error(t, Engine{BaseURL: "http://127.0.0.1:1"}.Health(ctx))
	_, err = Engine{BaseURL: "http://127.0.0.1:1"}.Models(ctx)
	assert.Error(t, err)
	assert.Error(t, Engine{BaseURL: "::bad"}.Health(ctx))
	_, err = Engine{BaseURL: "::bad"}.Models(ctx)
	assert.Error(t, err)
}

func TestWaitReady(t *testing.T) {
	calls := 0
	err := WaitReady(context.Background(), time.Millisecond, func(context.Context) error {
		calls++
		if calls < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	require.NoError(t, err)
	assert.Equal(t, 3, calls)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err = WaitReady(ctx, time.Millisecond, func(context.Context) error { return errors.New("never") })
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.ErrorContains(t, err, "last check: never")
}

func TestLivenessNeedsSeveralFailuresInARow(t *testing.T) {
	// Probe outcomes in order; the engine is unhealthy only after 3 failures in a row.
	outcomes := []bool{false, false, true, false, false, false, true, true}
	var i atomic.Int32
	unhealthy := make(chan error, 10)
	probed := make(chan struct{}, 100)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Liveness{
		Probe: func(context.Context) error {
			n := int(i.Add(1)) - 1
			if n >= len(outcomes) || outcomes[n] {
				return nil
			}
			return errors.New("slow")
		},
		Interval:    time.Millisecond,
		Timeout:     time.Second,
		Failures:    3,
		OnUnhealthy: func(err error) { unhealthy <- err },
		OnProbe:     func(error) { probed <- struct{}{} },
	}.Run(ctx)
	for n := 0; n < len(outcomes)+2; n++ {
		<-probed
	}
	cancel()
	require.Len(t, unhealthy, 1, "two failures then a success reset the count")
	err := <-unhealthy
	assert.ErrorContains(t, err, "3 liveness probes failed in a row; last: slow")
}

func TestLivenessProbeTimeout(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	unhealthy := make(chan error, 1)
	go Liveness{
		Probe: func(ctx context.Context) error {
			<-ctx.Done() // a hung engine never answers
			return ctx.Err()
		},
		Interval:    time.Millisecond,
		Timeout:     10 * time.Millisecond,
		Failures:    2,
		OnUnhealthy: func(err error) { unhealthy <- err },
	}.Run(ctx)
	select {
	case err := <-unhealthy:
		assert.ErrorIs(t, err, context.DeadlineExceeded)
	case <-time.After(5 * time.Second):
		t.Fatal("a hung probe was never judged unhealthy")
	}
}
