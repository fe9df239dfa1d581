package gateway

import (
	"bufio"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestActivityFollowsTheEngine: the gateway's view of the engine's work, which the liveness
// watch reads, counts a stream in flight and moves its progress time with each chunk, and
// holds still while the engine holds back.
func TestActivityFollowsTheEngine(t *testing.T) {
	next := make(chan struct{})
	f := newFixture(t, sseEngine(next, func(*http.Request) bool { return false }, nil), false)
	assert.Zero(t, f.gw.Activity().InFlight, "idle")

	before := time.Now()
	req, _ := http.NewRequest("POST", f.url+"/v1/chat/completions", strings.NewReader(`{"model":"m","stream":true,"messages":[]}`))
	req.Header.Set("Authorization", "Bearer "+aliceKey)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	rd := bufio.NewReader(resp.Body)
	line, err := rd.ReadString('\n')
	require.NoError(t, err)
	require.Contains(t, line, `"one"`)

	a := f.gw.Activity()
	assert.Equal(t, 1, a.InFlight)
	assert.False(t, a.LastProgress.Before(before), "the first chunk is progress")
	// The engine holds the next chunk: no progress while it does.
	held := a.LastProgress
	assert.Equal(t, held, f.gw.Activity().LastProgress)

	next <- struct{}{}
	for !strings.Contains(line, `"two"`) {
		line, err = rd.ReadString('\n')
		require.NoError(t, err)
	}
	assert.True(t, f.gw.Activity().LastProgress.After(held), "the second chunk moves it")
	next <- struct{}{}
	resp.Body.Close()
	require.Eventually(t, func() bool { return f.gw.Activity().InFlight == 0 }, 5*time.Second, 5*time.Millisecond)
}
