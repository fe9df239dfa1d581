package gateway

import (
	"bufio"
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestInFlightLimits: past the per-key bound a key gets 429 with Retry-After while another key
// is still served; past the global bound every key gets 429; a finished request frees its place.
func TestInFlightLimits(t *testing.T) {
	release := make(chan struct{})
	var arrived sync.WaitGroup
	f := newFixture(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "completions") {
			arrived.Done()
			<-release
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"object":"list","data":[]}`))
	}, false, func(o *Options) { o.MaxInFlightPerKey, o.MaxInFlight = 2, 3 })

	var done sync.WaitGroup
	hold := func(key string) {
		arrived.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			resp, _ := f.do(t, "POST", "/v1/completions", key, `{"model":"m","prompt":"x"}`)
			assert.Equal(t, http.StatusOK, resp.StatusCode)
		}()
	}
	hold(aliceKey)
	hold(aliceKey)
	arrived.Wait()
	resp, body := f.do(t, "POST", "/v1/completions", aliceKey, `{"model":"m","prompt":"x"}`)
	assert.Equal(t, http.StatusTooManyRequests, resp.StatusCode, body)
	assert.Equal(t, "1", resp.Header.Get("Retry-After"))
	assert.Equal(t, "rate_limit_error", errorOf(t, body)["type"])

	hold(bobKey) // bob has his own bound; the service takes its third
	arrived.Wait()
	resp, _ = f.do(t, "GET", "/v1/models", bobKey, "")
	assert.Equal(t, http.StatusTooManyRequests, resp.StatusCode, "the global bound of 3 is reached")

	close(release)
	done.Wait()
	resp, _ = f.do(t, "GET", "/v1/models", aliceKey, "")
	assert.Equal(t, http.StatusOK, resp.StatusCode, "places are freed when requests end")
	resp, _ = f.do(t, "GET", "/v1/models", "sk-wrong-0123456789abcdef", "")
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "a wrong key is refused before any limit")
	assert.Zero(t, f.gw.admitted.Load(), "every admitted request was counted out")
}

// TestAuditFieldsBounded: a client's model name cannot grow an audit line or break its format.
func TestAuditFieldsBounded(t *testing.T) {
	f := newFixture(t, echoEngine(t), false, func(o *Options) { o.MaxBody = 1 << 20 })
	long := strings.Repeat("m", 100_000)
	for _, model := range []string{long, strings.Repeat("m", 1000), "bad\nline\x00\x1b[31m", "\xff\xfe", `quote"and\\back`} {
		b, _ := json.Marshal(map[string]any{"model": model, "prompt": "x"})
		resp, _ := f.do(t, "POST", "/v1/completions", aliceKey, string(b))
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
	require.NoError(t, f.audit.Sync())
	file, err := os.Open(f.auditLog)
	require.NoError(t, err)
	defer file.Close()
	sc := bufio.NewScanner(file)
	var models []string
	for sc.Scan() {
		assert.Less(t, len(sc.Bytes()), 2048, "an audit line stays small")
		var rec Record
		require.NoError(t, json.Unmarshal(sc.Bytes(), &rec), "every line is one JSON record")
		models = append(models, rec.Model)
	}
	require.Len(t, models, 5)
	assert.Equal(t, "(too long)", models[0], "a model name over 4 KiB is not even decoded")
	assert.Len(t, models[1], maxModelField)
	assert.True(t, strings.HasSuffix(models[1], "…"))
	assert.NotContains(t, models[2], "\n")
	assert.NotContains(t, models[2], "\x1b")
	assert.Equal(t, `quote"and\\back`, models[4])
}

func TestAuditField(t *testing.T) {
	assert.Equal(t, "tiny", auditField("tiny", 16))
	assert.Equal(t, "abcdefghijklm…", auditField(strings.Repeat("abcdefghijklmnop", 4), 16), "16 bytes with the mark")
	assert.Equal(t, "a\ufffdb", auditField("a\x01b", 16))
	assert.Equal(t, "\ufffd", auditField("\xff", 16))
	assert.LessOrEqual(t, len(auditField(strings.Repeat("é", 100), 9)), 9, "cut on a character boundary")
}
