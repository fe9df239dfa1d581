package gateway

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBucketsChargeUsageInPlaceOfTheReservation(t *testing.T) {
	now := time.Unix(1000, 0)
	var qs quotas
	q := qs.of(Key{Name: "a", RequestsPerMinute: 2, TokensPerMinute: 600}, now)
	require.NotNil(t, q)
	assert.Nil(t, qs.of(Key{Name: "b"}, now), "a key without limits has no quota")

	res, limit, _ := q.admit(100, now)
	assert.Equal(t, 100, res)
	assert.Empty(t, limit)
	q.done(res, 30) // used 30 of 100 reserved: 70 come back
	assert.InDelta(t, 570, q.tokens.level, 1e-9)
	_, limit, _ = q.admit(0, now)
	require.Empty(t, limit)
	q.done(0, 10)
	_, limit, retry := q.admit(0, now)
	assert.Equal(t, limitRequests, limit, "two requests a minute")
	assert.Equal(t, 30*time.Second, retry, "one request comes back every 30 s")
	_, limit, _ = q.admit(0, now.Add(30*time.Second))
	assert.Empty(t, limit)
	q.done(0, 1000) // more than the bucket held: 400 into debt, 100 still owed 30 s later
	_, limit, retry = q.admit(0, now.Add(60*time.Second))
	assert.Equal(t, limitTokens, limit)
	assert.Greater(t, retry, time.Duration(0))

	// A reservation larger than a minute's allowance waits for a full bucket, not for ever.
	big := qs.of(Key{Name: "c", TokensPerMinute: 60}, now)
	res, limit, _ = big.admit(1000, now)
	assert.Equal(t, 60, res)
	assert.Empty(t, limit)

	// In flight, and a changed keys file keeps counting what is running.
	fl := qs.of(Key{Name: "d", MaxInFlight: 1}, now)
	_, limit, _ = fl.admit(0, now)
	require.Empty(t, limit)
	_, limit, retry = fl.admit(0, now)
	assert.Equal(t, limitInFlight, limit)
	assert.Equal(t, time.Second, retry)
	changed := qs.of(Key{Name: "d", MaxInFlight: 1, RequestsPerMinute: 5}, now)
	assert.NotSame(t, fl, changed)
	_, limit, _ = changed.admit(0, now)
	assert.Equal(t, limitInFlight, limit, "the request in flight still counts")
	assert.Same(t, changed, qs.of(Key{Name: "d", MaxInFlight: 1, RequestsPerMinute: 5}, now))
}

func limitedFixture(t *testing.T, keys string) *fixture {
	f := newFixture(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.URL.Path == "/v1/models":
			w.Write([]byte(`{"object":"list","data":[{"id":"base","object":"model"},{"id":"sql-lora","object":"model","parent":"base"}]}`))
		case strings.Contains(r.URL.Path, "completions") && strings.Contains(readAll(r), `"missing"`):
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"error":{"message":"The model ` + "`missing`" + ` does not exist. Valid aliases: base.","type":"NotFoundError","param":"model","code":404}}`))
		default:
			w.Write([]byte(`{"object":"text_completion","choices":[{"text":"hi"}],"usage":{"prompt_tokens":5,"completion_tokens":5,"total_tokens":10}}`))
		}
	}, false)
	writeKeys(t, f.keysFile, keys)
	require.NoError(t, f.keys.Reload())
	return f
}

// TestModelAccess: a key that lists its models gets 404 for the others, worded as for a model
// that does not exist, and sees only its own in /v1/models.
func TestModelAccess(t *testing.T) {
	f := limitedFixture(t, "keys:\n  - {name: alice, project: p, key: "+aliceKey+", models: [sql-lora]}\n  - {name: bob, project: p, sha256: "+HashKey(bobKey)+"}\n")
	resp, body := f.do(t, "POST", "/v1/completions", aliceKey, `{"model":"base","prompt":"x"}`)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	e := errorOf(t, body)
	assert.Equal(t, "The model `base` does not exist.", e["message"])
	assert.Equal(t, "NotFoundError", e["type"])
	resp, unknown := f.do(t, "POST", "/v1/completions", aliceKey, `{"model":"nothing-here","prompt":"x"}`)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	assert.Equal(t, strings.Replace(body, "base", "nothing-here", 1), unknown, "an existing model not allowed and one that does not exist look the same")
	resp, _ = f.do(t, "POST", "/v1/completions", aliceKey, `{"prompt":"no model named"}`)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode, "a restricted key names its model")
	resp, _ = f.do(t, "POST", "/v1/completions", aliceKey, `{"model":"sql-lora","prompt":"x"}`)
	assert.Equal(t, http.StatusOK, resp.StatusCode)

	resp, body = f.do(t, "GET", "/v1/models", aliceKey, "")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.NotContains(t, body, `"base"`)
	assert.Contains(t, body, `"sql-lora"`)
	assert.Equal(t, strconv.Itoa(len(body)), resp.Header.Get("Content-Length"))
	resp, _ = f.do(t, "GET", "/v1/models/base", aliceKey, "")
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	resp, body = f.do(t, "GET", "/v1/models", bobKey, "")
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, body, `"base"`, "an unrestricted key sees every model")
	recs := f.records(t)
	assert.Equal(t, "model not found or not allowed for this key", recs[0].Error)
	assert.JSONEq(t, `{"object":"list","data":[]}`, string(filterModels([]byte("not json"), Key{Models: []string{"x"}})))
}

// TestEngineNotFoundIsRewrittenForRestrictedKeys: the engine's own 404 lists the served names;
// a restricted key gets the gateway's instead.
func TestEngineNotFoundIsRewrittenForRestrictedKeys(t *testing.T) {
	f := limitedFixture(t, "keys:\n  - {name: alice, project: p, key: "+aliceKey+", models: [missing]}\n  - {name: bob, project: p, sha256: "+HashKey(bobKey)+"}\n")
	req, _ := http.NewRequest("POST", f.url+"/v1/completions", strings.NewReader(`{"model":"missing","prompt":"x"}`))
	req.Header.Set("Authorization", "Bearer "+aliceKey)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	buf := make([]byte, 1024)
	n, _ := resp.Body.Read(buf)
	assert.NotContains(t, string(buf[:n]), "Valid aliases")
	assert.Contains(t, string(buf[:n]), "The model `missing` does not exist.")
}

// TestRateLimits: past its requests or tokens per minute a key gets 429 with Retry-After and
// OpenAI's rate_limit_exceeded; the audit log and the metrics count it; other keys are not held.
func TestRateLimits(t *testing.T) {
	f := limitedFixture(t, "keys:\n  - {name: alice, project: p, key: "+aliceKey+", requests_per_minute: 3}\n"+
		"  - {name: bob, project: q, sha256: "+HashKey(bobKey)+", tokens_per_minute: 25}\n")
	for i := 0; i < 3; i++ {
		resp, body := f.do(t, "POST", "/v1/completions", aliceKey, `{"model":"base","prompt":"x"}`)
		require.Equal(t, http.StatusOK, resp.StatusCode, body)
	}
	resp, body := f.do(t, "POST", "/v1/completions", aliceKey, `{"model":"base","prompt":"x"}`)
	assert.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	assert.Equal(t, "20", resp.Header.Get("Retry-After"), "3 a minute: one comes back every 20 s")
	e := errorOf(t, body)
	assert.Equal(t, "rate_limit_exceeded", e["code"])
	assert.Contains(t, e["message"], "requests_per_minute")

	// bob: 25 tokens a minute, 10 used per request; a max_tokens of 20 is reserved up front.
	resp, _ = f.do(t, "POST", "/v1/completions", bobKey, `{"model":"base","prompt":"x","max_tokens":20}`)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp, _ = f.do(t, "POST", "/v1/completions", bobKey, `{"model":"base","prompt":"x","max_tokens":20}`)
	assert.Equal(t, http.StatusTooManyRequests, resp.StatusCode, "15 left, 20 asked")
	resp, _ = f.do(t, "POST", "/v1/completions", bobKey, `{"model":"base","prompt":"x","max_completion_tokens":5}`)
	assert.Equal(t, http.StatusOK, resp.StatusCode, "15 left, 5 asked")

	recs := f.records(t)
	var throttled []string
	for _, r := range recs {
		if r.Status == http.StatusTooManyRequests {
			throttled = append(throttled, r.Key+" "+r.Error)
		}
	}
	assert.Equal(t, []string{"alice rate limit: requests_per_minute", "bob rate limit: tokens_per_minute"}, throttled)
	assert.Equal(t, 1.0, testutil.ToFloat64(f.metrics.throttled.WithLabelValues("alice", "p", limitRequests)))
	assert.Equal(t, 1.0, testutil.ToFloat64(f.metrics.throttled.WithLabelValues("bob", "q", limitTokens)))
}

func TestMaxInFlightPerKeyFromTheKeysFile(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan struct{}, 4)
	f := newFixture(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"object":"list","data":[]}`))
	}, false)
	writeKeys(t, f.keysFile, "keys:\n  - {name: alice, project: p, key: "+aliceKey+", max_in_flight: 1}\n  - {name: bob, project: p, sha256: "+HashKey(bobKey)+"}\n")
	require.NoError(t, f.keys.Reload())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		f.do(t, "POST", "/v1/completions", aliceKey, `{"model":"m","prompt":"x"}`)
	}()
	<-arrived
	resp, body := f.do(t, "POST", "/v1/completions", aliceKey, `{"model":"m","prompt":"x"}`)
	assert.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	assert.Contains(t, errorOf(t, body)["message"], "max_in_flight")
	close(release)
	wg.Wait()
}

func TestKeyLimitsAreChecked(t *testing.T) {
	for _, tc := range []struct{ key, want string }{
		{"{name: a, key: " + aliceKey + ", requests_per_minute: -1}", "cannot be negative"},
		{"{name: a, key: " + aliceKey + ", models: ['']}", "empty model name"},
	} {
		path := t.TempDir() + "/keys.yaml"
		writeKeys(t, path, "keys:\n  - "+tc.key+"\n")
		_, err := LoadKeys(path)
		require.ErrorIs(t, err, ErrKeys)
		assert.Contains(t, err.Error(), tc.want)
	}
}

func readAll(r *http.Request) string {
	b, _ := io.ReadAll(r.Body)
	return string(b)
}
