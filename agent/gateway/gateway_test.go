package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/clock"
	"github.com/llm-agent/llm-agent/vllm"
)

const (
	aliceKey  = "sk-alice-0123456789abcdef"
	bobKey    = "sk-bob-0123456789abcdef01"
	engineKey = "sk-internal-engine-key-xyz"
	prompt    = "the secret prompt text"
)

// lockedBuf collects log output from several goroutines.
type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type fixture struct {
	gw       *Gateway
	url      string
	engine   *httptest.Server
	ready    atomic.Bool
	audit    *Audit
	auditLog string
	log      *lockedBuf
	metrics  *Metrics
	keysFile string
	keys     *Keys
}

func writeKeys(t *testing.T, path, body string) {
	t.Helper()
	require.NoError(t, os.WriteFile(path+".tmp", []byte(body), 0o600))
	require.NoError(t, os.Rename(path+".tmp", path))
}

// socketEngine serves handler on a Unix socket in dir, as the engine does behind the gateway.
func socketEngine(t testing.TB, dir string, handler http.Handler) (*httptest.Server, vllm.Endpoint) {
	t.Helper()
	path := filepath.Join(dir, vllm.SocketName)
	ln, err := net.Listen("unix", path)
	require.NoError(t, err)
	srv := httptest.NewUnstartedServer(handler)
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, vllm.Endpoint{Socket: path}
}

// newFixture puts a gateway with alice (plain key, priority 3) and bob (hashed key) in front
// of an engine stub.
func newFixture(t *testing.T, engine http.HandlerFunc, priority bool, tweak ...func(*Options)) *fixture {
	t.Helper()
	f := &fixture{log: &lockedBuf{}}
	dir := t.TempDir()
	var socket vllm.Endpoint
	f.engine, socket = socketEngine(t, dir, engine)
	f.keysFile = filepath.Join(dir, "keys.yaml")
	writeKeys(t, f.keysFile, "keys:\n  - {name: alice, project: climate, key: "+aliceKey+", priority: 3}\n  - {name: bob, project: genomics, sha256: "+HashKey(bobKey)+"}\n")
	logger := hclog.New(&hclog.LoggerOptions{Output: f.log, Level: hclog.Trace})
	var err error
	f.keys, err = NewKeys(f.keysFile, nil, logger)
	require.NoError(t, err)
	f.auditLog = filepath.Join(dir, AuditFile)
	f.audit, err = OpenAudit(f.auditLog)
	require.NoError(t, err)
	f.metrics = NewMetrics("n1", "9")
	f.ready.Store(true)
	opts := Options{Engine: socket, EngineKey: engineKey, Keys: f.keys,
		Ready: func() (bool, string) {
			if f.ready.Load() {
				return true, ""
			}
			return false, notReadyReason
		},
		Audit: f.audit, Metrics: f.metrics, MaxBody: 1024, Priority: priority, Logger: logger}
	for _, tw := range tweak {
		tw(&opts)
	}
	f.gw = New(opts)
	srv := httptest.NewServer(f.gw.Handler())
	t.Cleanup(srv.Close)
	f.url = srv.URL
	return f
}

func (f *fixture) do(t *testing.T, method, path, key, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, f.url+path, strings.NewReader(body))
	require.NoError(t, err)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func (f *fixture) records(t *testing.T) []Record {
	t.Helper()
	require.NoError(t, f.audit.Sync())
	b, err := os.ReadFile(f.auditLog)
	require.NoError(t, err)
	var out []Record
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		var r Record
		require.NoError(t, json.Unmarshal([]byte(line), &r))
		out = append(out, r)
	}
	return out
}

// echoEngine answers like vLLM and checks it got the internal key, never the client's.
func echoEngine(t *testing.T) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+engineKey {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Seen-Body", strings.ReplaceAll(string(body), "\n", ""))
		w.Write([]byte(`{"object":"chat.completion","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}`))
	}
}

func errorOf(t *testing.T, body string) map[string]any {
	t.Helper()
	var e struct {
		Error map[string]any `json:"error"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &e), body)
	require.NotNil(t, e.Error, body)
	return e.Error
}

func TestAuth(t *testing.T) {
	f := newFixture(t, echoEngine(t), false)
	chat := `{"model":"m","messages":[{"role":"user","content":"` + prompt + `"}]}`
	tests := []struct {
		name, key string
		status    int
	}{
		{"plain key", aliceKey, 200},
		{"hashed key", bobKey, 200},
		{"wrong key", "sk-nope-0123456789abcdef", 401},
		{"missing key", "", 401},
		{"the engine's internal key is not a client key", engineKey, 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := f.do(t, "POST", "/v1/chat/completions", tt.key, chat)
			assert.Equal(t, tt.status, resp.StatusCode, body)
			if tt.status == 401 {
				e := errorOf(t, body)
				assert.Equal(t, "invalid_request_error", e["type"])
				assert.Equal(t, "invalid_api_key", e["code"])
			}
		})
	}
	recs := f.records(t)
	require.Len(t, recs, 2, "only authenticated requests are audited")
	assert.Equal(t, "alice", recs[0].Key)
	assert.Equal(t, "climate", recs[0].Project)
	assert.Equal(t, "bob", recs[1].Key)
}

func TestKeysReload(t *testing.T) {
	f := newFixture(t, echoEngine(t), false)
	carolKey := "sk-carol-0123456789abcdef"
	resp, _ := f.do(t, "GET", "/v1/models", carolKey, "")
	assert.Equal(t, 401, resp.StatusCode)

	// A change of the file is picked up by the watcher.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go f.keys.Watch(ctx, clock.Real{}, 10*time.Millisecond)
	writeKeys(t, f.keysFile, "keys:\n  - {name: carol, project: physics, key: "+carolKey+"}\n")
	require.Eventually(t, func() bool {
		resp, _ := f.do(t, "GET", "/v1/models", carolKey, "")
		return resp.StatusCode == 200
	}, 5*time.Second, 10*time.Millisecond)
	resp, _ = f.do(t, "GET", "/v1/models", aliceKey, "")
	assert.Equal(t, 401, resp.StatusCode, "alice was removed")

	// A bad file keeps the old keys and says why.
	writeKeys(t, f.keysFile, "keys:\n  - {name: dave, project: x, key: short}\n")
	require.Eventually(t, func() bool { return strings.Contains(f.log.String(), "keeping the old keys") }, 5*time.Second, 10*time.Millisecond)
	resp, _ = f.do(t, "GET", "/v1/models", carolKey, "")
	assert.Equal(t, 200, resp.StatusCode)

	// SIGHUP reloads too, with a watcher that would not look at the file for an hour. The test
	// holds SIGHUP itself, so that a signal handled after a watcher stopped cannot end the test
	// binary; it signals until the new watcher has taken it.
	hold := make(chan os.Signal, 16)
	signal.Notify(hold, syscall.SIGHUP)
	defer signal.Stop(hold)
	cancel()
	hupCtx, stopHup := context.WithCancel(context.Background())
	defer stopHup()
	go f.keys.Watch(hupCtx, clock.NewFake(), time.Hour) // the file is never looked at again
	writeKeys(t, f.keysFile, "keys:\n  - {name: erin, project: x, key: sk-erin-0123456789abcdef}\n")
	require.Eventually(t, func() bool {
		require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGHUP))
		resp, _ := f.do(t, "GET", "/v1/models", "sk-erin-0123456789abcdef", "")
		return resp.StatusCode == 200
	}, 5*time.Second, 20*time.Millisecond)
	assert.NotContains(t, f.log.String(), "sk-erin", "no key in the log")
}

func TestKeysFileErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, body string
		mode       os.FileMode
		err        string
	}{
		{"readable by others", "keys:\n  - {name: a, key: sk-aaaaaaaaaaaaaaaaaaaa}\n", 0o644, "chmod 600"},
		{"unknown field", "keys:\n  - {name: a, secret: x}\n", 0o600, "field secret not found"},
		{"no keys", "keys: []\n", 0o600, "no keys"},
		{"unnamed", "keys:\n  - {key: sk-aaaaaaaaaaaaaaaaaaaa}\n", 0o600, "has no name"},
		{"duplicate name", "keys:\n  - {name: a, key: sk-aaaaaaaaaaaaaaaaaaaa}\n  - {name: a, key: sk-bbbbbbbbbbbbbbbbbbbb}\n", 0o600, "two keys are named"},
		{"duplicate key", "keys:\n  - {name: a, key: sk-aaaaaaaaaaaaaaaaaaaa}\n  - {name: b, key: sk-aaaaaaaaaaaaaaaaaaaa}\n", 0o600, "repeats another key"},
		{"both forms", "keys:\n  - {name: a, key: sk-aaaaaaaaaaaaaaaaaaaa, sha256: " + HashKey("x") + "}\n", 0o600, "both key and sha256"},
		{"neither form", "keys:\n  - {name: a}\n", 0o600, "neither key nor sha256"},
		{"bad hash", "keys:\n  - {name: a, sha256: abc}\n", 0o600, "64 hex digits"},
		{"json works too", `{"keys": [{"name": "a", "key": "sk-aaaaaaaaaaaaaaaaaaaa"}]}`, 0o600, ""},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, string(rune('a'+i))+".yaml")
			require.NoError(t, os.WriteFile(p, []byte(tt.body), tt.mode))
			require.NoError(t, os.Chmod(p, tt.mode))
			set, err := LoadKeys(p)
			if tt.err == "" {
				require.NoError(t, err)
				_, ok := set.Lookup("sk-aaaaaaaaaaaaaaaaaaaa")
				assert.True(t, ok)
				return
			}
			assert.ErrorIs(t, err, ErrKeys)
			assert.ErrorContains(t, err, tt.err)
			assert.NotContains(t, err.Error(), "sk-aaaa", "no key in errors")
		})
	}
	_, err := LoadKeys(filepath.Join(dir, "missing.yaml"))
	assert.ErrorIs(t, err, ErrKeys)
}

// notReadyReason is what the agent's state says while the engine is down: it can hold the
// engine's error text and paths, which belong to the owner only.
const notReadyReason = "engine backoff: exit status 1; the engine said: OSError: /home/alice/models/secret-project/config.json"

func TestNotReadyAnswers503(t *testing.T) {
	var calls atomic.Int32
	f := newFixture(t, func(w http.ResponseWriter, r *http.Request) { calls.Add(1) }, false)
	f.ready.Store(false)
	resp, body := f.do(t, "POST", "/v1/completions", aliceKey, `{"model":"m","prompt":"x"}`)
	assert.Equal(t, 503, resp.StatusCode)
	assert.Equal(t, "5", resp.Header.Get("Retry-After"))
	e := errorOf(t, body)
	assert.Equal(t, "service_unavailable", e["type"])
	assert.Equal(t, "the model is not ready; retry shortly", e["message"], "no engine error text or path to a client")
	assert.Zero(t, calls.Load(), "the engine is not bothered")
	resp, body = f.do(t, "GET", "/readyz", "", "")
	assert.Equal(t, 503, resp.StatusCode)
	assert.Equal(t, "not ready\n", string(body), "the public port says no more than not ready")
	f.ready.Store(true)
	resp, _ = f.do(t, "GET", "/readyz", "", "")
	assert.Equal(t, 200, resp.StatusCode)

	// An engine that refuses connections (killed, restarting) gets the same answer.
	f.engine.Close()
	resp, body = f.do(t, "POST", "/v1/completions", aliceKey, `{"model":"m","prompt":"x"}`)
	assert.Equal(t, 503, resp.StatusCode)
	assert.Equal(t, "5", resp.Header.Get("Retry-After"))
	assert.Contains(t, errorOf(t, body)["message"], "not answering")
}

func TestOnlyV1AndOwnProbesAreServed(t *testing.T) {
	var leaked atomic.Int32
	f := newFixture(t, func(w http.ResponseWriter, r *http.Request) { leaked.Add(1) }, false)
	for _, p := range []string{"/metrics", "/health", "/tokenize", "/version", "/docs", "/"} {
		resp, body := f.do(t, "GET", p, aliceKey, "")
		assert.Equal(t, 404, resp.StatusCode, p)
		assert.Contains(t, errorOf(t, body)["message"], "under /v1", p)
	}
	assert.Zero(t, leaked.Load(), "no engine-internal route reaches the engine")
	resp, body := f.do(t, "GET", "/healthz", "", "")
	assert.Equal(t, 200, resp.StatusCode)
	assert.Equal(t, "ok\n", body)
}

func TestBodyLimit(t *testing.T) {
	f := newFixture(t, echoEngine(t), false)
	big := `{"model":"m","prompt":"` + strings.Repeat("x", 2000) + `"}`
	resp, body := f.do(t, "POST", "/v1/completions", aliceKey, big)
	assert.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
	assert.Contains(t, errorOf(t, body)["message"], "larger than 1024 bytes")
	resp, _ = f.do(t, "POST", "/v1/completions", aliceKey, `{"model":"m","prompt":"small"}`)
	assert.Equal(t, 200, resp.StatusCode)
}

func TestAuditLineAndNoSecretsAnywhere(t *testing.T) {
	f := newFixture(t, echoEngine(t), false)
	resp, _ := f.do(t, "POST", "/v1/chat/completions", aliceKey, `{"model":"tiny","messages":[{"role":"user","content":"`+prompt+`"}]}`)
	require.Equal(t, 200, resp.StatusCode)
	f.do(t, "POST", "/v1/chat/completions", "sk-wrong-0123456789abcdef", `{"model":"tiny","messages":[{"content":"`+prompt+`"}]}`)
	recs := f.records(t)
	require.Len(t, recs, 1)
	r := recs[0]
	assert.Equal(t, "alice", r.Key)
	assert.Equal(t, "climate", r.Project)
	assert.Equal(t, "/v1/chat/completions", r.Endpoint)
	assert.Equal(t, "tiny", r.Model)
	assert.Equal(t, 200, r.Status)
	assert.Equal(t, 7, r.PromptTokens)
	assert.Equal(t, 3, r.CompletionTokens)
	assert.Greater(t, r.LatencySeconds, 0.0)
	assert.WithinDuration(t, time.Now(), r.Time, time.Minute)
	raw, _ := os.ReadFile(f.auditLog)
	fi, _ := os.Stat(f.auditLog)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	for _, secret := range []string{aliceKey, bobKey, engineKey, prompt, "sk-wrong"} {
		assert.NotContains(t, string(raw), secret, "audit log")
		assert.NotContains(t, f.log.String(), secret, "gateway log")
	}
	// Per-key metrics.
	n := testutil.ToFloat64(f.metrics.requests.WithLabelValues("alice", "climate", "/v1/chat/completions", "200"))
	assert.Equal(t, 1.0, n)
	assert.Equal(t, 1.0, testutil.ToFloat64(f.metrics.requests.WithLabelValues("unauthenticated", "", "/v1/chat/completions", "401")))
	assert.Equal(t, 7.0, testutil.ToFloat64(f.metrics.tokens.WithLabelValues("alice", "climate", "prompt")))
	assert.Equal(t, 3.0, testutil.ToFloat64(f.metrics.tokens.WithLabelValues("alice", "climate", "completion")))
	reg := prometheus.NewRegistry()
	reg.MustRegister(f.metrics)
	count, err := testutil.GatherAndCount(reg, "llm_agent_gateway_request_duration_seconds")
	require.NoError(t, err)
	assert.Equal(t, 1, count)
}

// sseEngine streams three chunks; it waits for next before sending each chunk after the first.
func sseEngine(next <-chan struct{}, withUsage func(*http.Request) bool, seen chan<- string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if seen != nil {
			seen <- string(body)
		}
		w.Header().Set("Content-Type", "text/event-stream")
		fl := w.(http.Flusher)
		for i, tok := range []string{"one", "two", "three"} {
			if i > 0 && next != nil {
				select {
				case <-next:
				case <-r.Context().Done():
					return
				}
			}
			io.WriteString(w, `data: {"choices":[{"delta":{"content":"`+tok+`"}}]}`+"\n\n")
			fl.Flush()
		}
		if withUsage(r) {
			io.WriteString(w, `data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3}}`+"\n\n")
		}
		io.WriteString(w, "data: [DONE]\n\n")
		fl.Flush()
	}
}

func TestSSEPassesChunksThroughUnbuffered(t *testing.T) {
	next := make(chan struct{})
	seen := make(chan string, 1)
	f := newFixture(t, sseEngine(next, func(*http.Request) bool { return true }, seen), false)
	req, _ := http.NewRequest("POST", f.url+"/v1/chat/completions", strings.NewReader(`{"model":"m","stream":true,"messages":[]}`))
	req.Header.Set("Authorization", "Bearer "+aliceKey)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	assert.Contains(t, <-seen, `"stream_options":{"include_usage":true}`, "the gateway asks for usage")
	rd := bufio.NewReader(resp.Body)
	readData := func() string {
		for {
			line, err := rd.ReadString('\n')
			require.NoError(t, err)
			if strings.HasPrefix(line, "data: ") {
				return strings.TrimSpace(strings.TrimPrefix(line, "data: "))
			}
		}
	}
	// The first chunk arrives while the engine is still holding back the second.
	assert.Contains(t, readData(), `"one"`)
	next <- struct{}{}
	assert.Contains(t, readData(), `"two"`)
	next <- struct{}{}
	assert.Contains(t, readData(), `"three"`)
	assert.Equal(t, "[DONE]", readData(), "the usage chunk the client did not ask for is not passed on")
	resp.Body.Close()
	var recs []Record
	require.Eventually(t, func() bool { recs = f.records(t); return len(recs) == 1 }, 5*time.Second, 5*time.Millisecond)
	assert.True(t, recs[0].Stream)
	assert.Equal(t, 5, recs[0].PromptTokens)
	assert.Equal(t, 3, recs[0].CompletionTokens)
	assert.Greater(t, recs[0].TTFTSeconds, 0.0)
}

func TestSSEUsageTheClientAskedForIsKept(t *testing.T) {
	f := newFixture(t, sseEngine(nil, func(*http.Request) bool { return true }, nil), false)
	_, body := f.do(t, "POST", "/v1/completions", bobKey, `{"model":"m","stream":true,"stream_options":{"include_usage":true},"prompt":"x"}`)
	assert.Contains(t, body, `"usage":{"prompt_tokens":5`)
	assert.True(t, strings.HasSuffix(body, "data: [DONE]\n\n"))
}

func TestClientDisconnectCancelsUpstream(t *testing.T) {
	cancelled := make(chan struct{})
	f := newFixture(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, `data: {"choices":[{"delta":{"content":"a"}}]}`+"\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done() // a long generation, until the client goes
		close(cancelled)
	}, false)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", f.url+"/v1/completions", strings.NewReader(`{"model":"m","stream":true,"prompt":"x"}`))
	req.Header.Set("Authorization", "Bearer "+aliceKey)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	line, _ := bufio.NewReader(resp.Body).ReadString('\n')
	assert.Contains(t, line, "data:")
	cancel()
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the engine's request was not cancelled when the client left")
	}
	require.Eventually(t, func() bool { recs := f.records(t); return len(recs) == 1 && recs[0].Status == 499 }, 5*time.Second, 10*time.Millisecond)
}

func TestEngineDiesMidStream(t *testing.T) {
	f := newFixture(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, `data: {"choices":[{"delta":{"content":"a"}}]}`+"\n\n")
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // the engine process dies: the connection is cut
	}, false)
	resp, body := f.do(t, "POST", "/v1/chat/completions", aliceKey, `{"model":"m","stream":true,"messages":[]}`)
	assert.Equal(t, 200, resp.StatusCode)
	assert.Contains(t, body, `"content":"a"`)
	assert.Contains(t, body, `"code":"engine_failed"`, "a clean error event")
	assert.True(t, strings.HasSuffix(body, "data: [DONE]\n\n"), "and the end of the stream")
	recs := f.records(t)
	require.Len(t, recs, 1)
	assert.Equal(t, 502, recs[0].Status)

	f2 := newFixture(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		io.WriteString(w, `{"partial":`)
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}, false)
	resp, body = f2.do(t, "POST", "/v1/completions", aliceKey, `{"model":"m","prompt":"x"}`)
	assert.Equal(t, 502, resp.StatusCode)
	assert.Equal(t, "engine_failed", errorOf(t, body)["code"])
}

func TestPriorityIsAdded(t *testing.T) {
	f := newFixture(t, echoEngine(t), true)
	resp, _ := f.do(t, "POST", "/v1/completions", aliceKey, `{"model":"m","prompt":"x"}`)
	assert.Contains(t, resp.Header.Get("X-Seen-Body"), `"priority":3`)
	resp, _ = f.do(t, "POST", "/v1/completions", aliceKey, `{"model":"m","prompt":"x","priority":9}`)
	assert.Contains(t, resp.Header.Get("X-Seen-Body"), `"priority":9`, "the client's own value stands")
	resp, _ = f.do(t, "POST", "/v1/completions", bobKey, `{"model":"m","prompt":"x"}`)
	assert.NotContains(t, resp.Header.Get("X-Seen-Body"), "priority", "bob has none")
	off := newFixture(t, echoEngine(t), false)
	resp, _ = off.do(t, "POST", "/v1/completions", aliceKey, `{"model":"m","prompt":"x"}`)
	assert.NotContains(t, resp.Header.Get("X-Seen-Body"), "priority", "only for an engine with priority scheduling")
}

func TestDrainWaitsForRequestsInFlight(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{})
	f := newFixture(t, func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		w.Write([]byte(`{"usage":{"prompt_tokens":1,"completion_tokens":1}}`))
	}, false)
	result := make(chan int, 1)
	go func() {
		resp, _ := f.do(t, "POST", "/v1/completions", aliceKey, `{"model":"m","prompt":"x"}`)
		result <- resp.StatusCode
	}()
	<-started
	drained := make(chan int64, 1)
	go func() { drained <- f.gw.Drain(context.Background()) }()
	require.Eventually(t, func() bool {
		resp, _ := f.do(t, "POST", "/v1/completions", aliceKey, `{"model":"m","prompt":"y"}`)
		return resp.StatusCode == 503
	}, 5*time.Second, 10*time.Millisecond, "new requests get 503 while draining")
	select {
	case <-drained:
		t.Fatal("drain returned while a request was in flight")
	default:
	}
	close(release)
	assert.Equal(t, 200, <-result, "the request in flight finished")
	assert.Equal(t, int64(0), <-drained)

	// A drain budget that runs out reports what was left.
	hold := make(chan struct{})
	f2 := newFixture(t, func(w http.ResponseWriter, r *http.Request) { <-hold }, false)
	go f2.do(t, "POST", "/v1/completions", aliceKey, `{"model":"m","prompt":"x"}`)
	require.Eventually(t, func() bool { return f2.gw.active.Load() == 1 }, 5*time.Second, time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	assert.Equal(t, int64(1), f2.gw.Drain(ctx))
	close(hold)
}

func TestUsageSummary(t *testing.T) {
	log := strings.Join([]string{
		`{"key":"alice","project":"climate","status":200,"prompt_tokens":60,"completion_tokens":40}`,
		`{"key":"alice","project":"climate","status":503,"prompt_tokens":0,"completion_tokens":0}`,
		`{"key":"bob","project":"genomics","status":200,"prompt_tokens":200,"completion_tokens":100}`,
		`{"key":"carol","project":"climate","status":200,"prompt_tokens":50,"completion_tokens":50}`,
		``,
	}, "\n")
	rep, err := Summarize(strings.NewReader(log), 4, 2*time.Hour, 100)
	require.NoError(t, err)
	assert.Equal(t, 8.0, rep.GPUHours)
	assert.Equal(t, 800.0, rep.ServiceUnits)
	require.Len(t, rep.Keys, 3)
	assert.Equal(t, "bob", rep.Keys[0].Key)
	assert.InDelta(t, 0.6, rep.Keys[0].Share, 1e-9)
	assert.InDelta(t, 4.8, rep.Keys[0].GPUHours, 1e-9)
	assert.InDelta(t, 480, rep.Keys[0].ServiceUnits, 1e-9)
	alice := rep.Keys[1]
	assert.Equal(t, "alice", alice.Key)
	assert.Equal(t, 2, alice.Requests)
	assert.Equal(t, 1, alice.Errors)
	require.Len(t, rep.Projects, 2)
	assert.Equal(t, "genomics", rep.Projects[0].Project)
	assert.Equal(t, "climate", rep.Projects[1].Project)
	assert.InDelta(t, 0.4, rep.Projects[1].Share, 1e-9)
	assert.Equal(t, 3, rep.Projects[1].Requests)
	var out bytes.Buffer
	require.NoError(t, rep.WriteTable(&out))
	assert.Contains(t, out.String(), "2.00 h × 4 GPUs = 8.00 GPU-hours = 800.0 SU")
	assert.Contains(t, out.String(), "60.0%")
	assert.NotContains(t, out.String(), "skipped")
	_, err = SummarizeFile(filepath.Join(t.TempDir(), "none"), 1, time.Hour, 1)
	assert.ErrorContains(t, err, "no audit log at")
}

// TestUsageOverDamagedLog: damaged lines (cut by a crash, binary junk, a line of megabytes, a
// record without a key) are skipped and counted, and the rest adds up.
func TestUsageOverDamagedLog(t *testing.T) {
	good := `{"key":"alice","project":"p","status":200,"prompt_tokens":6,"completion_tokens":4}`
	log := strings.Join([]string{
		good,
		`{"key":"alice","project":"p","status":200,"prompt_tok`,
		"\x00\x01\xff\xfe",
		`{"key":"bob","project":"q","status":200,"prompt_tokens":1,"completion_tokens":1,"model":"` + strings.Repeat("x", 3<<20) + `"}`,
		`{"project":"p","status":200}`,
		`[1,2,3]`,
		good,
		`{"key":"alice","project":"p","status":200,"prompt_tokens":1,"completion_tokens":1}`, // no newline at the end
	}, "\n")
	rep, err := Summarize(strings.NewReader(log), 1, time.Hour, 1)
	require.NoError(t, err)
	assert.Equal(t, 5, rep.Skipped)
	require.Len(t, rep.Keys, 1)
	assert.Equal(t, 3, rep.Keys[0].Requests)
	assert.Equal(t, int64(13), rep.Keys[0].PromptTokens)
	var out bytes.Buffer
	require.NoError(t, rep.WriteTable(&out))
	assert.Contains(t, out.String(), "skipped 5 damaged audit line(s)")
}

func TestAuditRunSyncsAndCloses(t *testing.T) {
	path := filepath.Join(t.TempDir(), AuditFile)
	a, err := OpenAudit(path)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, 10*time.Millisecond) }()
	require.NoError(t, a.Write(Record{Key: "k", Status: 200}))
	require.Eventually(t, func() bool {
		b, _ := os.ReadFile(path)
		return strings.Contains(string(b), `"key":"k"`)
	}, 5*time.Second, 5*time.Millisecond, "on disk within the sync interval")
	cancel()
	assert.NoError(t, <-done)
	_, err = OpenAudit(filepath.Join(t.TempDir(), "no", "such", "dir"))
	assert.Error(t, err)
}

// TestAuditEncodingMatchesEncodingJSON checks the hand-written encoder against encoding/json.
func TestAuditEncodingMatchesEncodingJSON(t *testing.T) {
	records := []Record{
		{Time: time.Date(2026, 11, 26, 12, 0, 0, 123456789, time.UTC), Key: "alice", Project: "climate", Endpoint: "/v1/chat/completions",
			Model: "tiny", Status: 200, Stream: true, PromptTokens: 7, CompletionTokens: 3, LatencySeconds: 0.0123, TTFTSeconds: 0.001},
		{Time: time.Unix(0, 0).UTC(), Key: "we\"ird\\na\tme\x01", Project: "üñí", Endpoint: "/v1/other", Status: 502,
			LatencySeconds: 2, Error: "engine stopped mid-stream"},
		{Key: "bad utf8 \xff", Status: 401},
	}
	for _, r := range records {
		want, err := json.Marshal(r)
		require.NoError(t, err)
		var a, b map[string]any
		require.NoError(t, json.Unmarshal(want, &a))
		got := r.appendJSON(nil)
		require.True(t, bytes.HasSuffix(got, []byte("}\n")))
		require.NoError(t, json.Unmarshal(got, &b), string(got))
		assert.Equal(t, a, b)
	}
}

// TestSSELongLines: events whose lines are longer than the gateway's read buffer pass whole,
// and a line that ends just past the buffer is not taken for the blank line ending an event:
// here the usage chunk the gateway asked for, which must vanish without a trace.
func TestSSELongLines(t *testing.T) {
	long := `data: {"choices":[{"text":"` + strings.Repeat("y", 200<<10) + `"}]}` + "\n\n"
	head, tail := `data: {"choices":[],"pad":"`, `","usage":{"prompt_tokens":2,"completion_tokens":9}}`
	usage := head + strings.Repeat("z", 64<<10-len(head)-len(tail)) + tail + "\n\n" // its line fills the buffer exactly
	f := newFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, long+usage+"data: [DONE]\n\n")
	}), false)
	_, body := f.do(t, "POST", "/v1/completions", bobKey, `{"model":"m","stream":true,"prompt":"x"}`)
	assert.Equal(t, long+"data: [DONE]\n\n", body, "each event whole, the usage chunk the client did not ask for left out")
	var recs []Record
	require.Eventually(t, func() bool { recs = f.records(t); return len(recs) == 1 }, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, 9, recs[0].CompletionTokens)
}

// TestSSEEventNotHeldForAPartOfTheNext: an event that came with the first part of the next
// reaches the client while the engine still holds back the rest.
func TestSSEEventNotHeldForAPartOfTheNext(t *testing.T) {
	next := make(chan struct{})
	f := newFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, `data: {"choices":[{"text":"one"}]}`+"\n\n"+`data: {"choices":[{"te`)
		w.(http.Flusher).Flush()
		select {
		case <-next:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, `xt":"two"}]}`+"\n\ndata: [DONE]\n\n")
	}), false)
	var release sync.Once
	t.Cleanup(func() { release.Do(func() { close(next) }) }) // before the fixture's servers close
	req, _ := http.NewRequest("POST", f.url+"/v1/completions", strings.NewReader(`{"model":"m","stream":true,"stream_options":{"include_usage":true},"prompt":"x"}`))
	req.Header.Set("Authorization", "Bearer "+aliceKey)
	first := make(chan string, 1)
	var rd *bufio.Reader
	go func() { // the answer's headers too leave with the first event
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			first <- err.Error()
			return
		}
		t.Cleanup(func() { resp.Body.Close() })
		rd = bufio.NewReader(resp.Body)
		line, _ := rd.ReadString('\n')
		first <- line
	}()
	select {
	case line := <-first:
		assert.Contains(t, line, `"one"`)
	case <-time.After(5 * time.Second):
		t.Fatal("the first event was held back until the engine sent the rest of the second")
	}
	release.Do(func() { close(next) })
	rest, err := io.ReadAll(rd)
	require.NoError(t, err)
	assert.Equal(t, "\n"+`data: {"choices":[{"text":"two"}]}`+"\n\ndata: [DONE]\n\n", string(rest))
}
