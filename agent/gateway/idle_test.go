package gateway

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestIdleCountsKeyedRequestsOnly: the gateway's idle time, which --idle-release goes by, and the
// last-request gauge move with a request that presents a valid key, never with one that does
// not: whoever can reach the port cannot keep the allocation awake.
func TestIdleCountsKeyedRequestsOnly(t *testing.T) {
	f := newFixture(t, echoEngine(t), false)
	startGauge := testutil.ToFloat64(f.metrics.lastRequest)
	require.InDelta(t, float64(time.Now().Unix()), startGauge, 5, "the gateway's start before any request")
	f.gw.demand.Store(time.Now().Add(-time.Hour).UnixNano()) // an hour with no request
	f.metrics.lastRequest.Set(startGauge - 3600)
	assert.InDelta(t, time.Hour.Seconds(), f.gw.Idle().Seconds(), 5)

	chat := `{"model":"m","messages":[{"role":"user","content":"` + prompt + `"}]}`
	resp, _ := f.do(t, "POST", "/v1/chat/completions", "sk-nope-0123456789abcdef", chat)
	require.Equal(t, 401, resp.StatusCode)
	assert.InDelta(t, time.Hour.Seconds(), f.gw.Idle().Seconds(), 5, "a request without a valid key keeps nothing awake")
	assert.Equal(t, startGauge-3600, testutil.ToFloat64(f.metrics.lastRequest))

	before := time.Now()
	resp, _ = f.do(t, "POST", "/v1/chat/completions", aliceKey, chat)
	require.Equal(t, 200, resp.StatusCode)
	assert.Less(t, f.gw.Idle(), time.Since(before)+time.Millisecond, "idle counts from the last keyed request")
	assert.GreaterOrEqual(t, testutil.ToFloat64(f.metrics.lastRequest), float64(before.UnixNano())/1e9)

	f.gw.active.Add(1) // a request in flight: not idle, however long ago it came
	f.gw.demand.Store(time.Now().Add(-time.Hour).UnixNano())
	assert.Zero(t, f.gw.Idle())
	f.gw.active.Add(-1)
}
