package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/llm-agent/llm-agent/vllm"
)

// Options configure a Gateway.
type Options struct {
	// Engine is where the engine listens: its Unix socket, or a port on loopback.
	Engine vllm.Endpoint
	// EngineKey is the internal key the engine requires; clients never see it.
	EngineKey string
	// Keys are the client keys.
	Keys *Keys
	// Ready tells whether the engine serves, and why not.
	Ready func() (bool, string)
	// Audit receives one record per /v1 request; nil keeps none.
	Audit *Audit
	// Metrics count requests, tokens and latency per key; nil counts nothing.
	Metrics *Metrics
	// MaxBody bounds a request body.
	MaxBody int64
	// Priority adds the key's priority to requests, for an engine started with
	// --scheduling-policy priority, and keeps a client from claiming a better one.
	Priority bool
	// RetryAfter is what 503 answers tell clients to wait.
	RetryAfter time.Duration
	// MaxInFlightPerKey and MaxInFlight bound the requests in flight for one key and for all;
	// past them clients get 429. Zero means no bound.
	MaxInFlightPerKey, MaxInFlight int
	// LoRA tells that the engine serves LoRA adapters and may load more at run time; OwnerKey
	// authenticates the job's owner on the routes that do (empty: nobody may), and OnAdapter
	// hears of each adapter the engine loaded (with its path) or unloaded (path empty).
	LoRA      bool
	OwnerKey  string
	OnAdapter func(name, path string)
	// Name names the local engine's replica (its node) in the ReplicaHeader of answers, once
	// the gateway routes to several (SetReplicas); Model is its served model's name, by which
	// requests are routed once the replicas serve several models.
	Name, Model string
	// Logger receives the gateway's log lines; never a key or a prompt.
	Logger hclog.Logger
}

// Gateway is the authenticated reverse proxy in front of the engine.
type Gateway struct {
	opts Options
	// pool holds the engines requests go to: the local one first.
	pool pool
	// perKey counts each key's requests in flight (key name -> *atomic.Int64); the names come
	// from the keys file, so the map stays small.
	perKey   sync.Map
	admitted atomic.Int64
	inflight sync.WaitGroup
	draining atomic.Bool
	// successor is the base URL of the job that serves the service now, once this one hands
	// over; nil before.
	successor atomic.Pointer[string]
	// closing ends every connection after its answer: clients that follow the service open
	// their next one to the successor.
	closing  atomic.Bool
	active   atomic.Int64
	progress progress
	quotas   quotas
	// demand is when the last request with a valid key arrived (unix nanoseconds; sawDemand).
	demand atomic.Int64
}

// New returns a gateway.
func New(o Options) *Gateway {
	if o.RetryAfter <= 0 {
		o.RetryAfter = 5 * time.Second
	}
	if o.MaxBody <= 0 {
		o.MaxBody = 32 << 20
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	// Compression stays off: the engine's bytes pass through as they come.
	local := &Replica{Name: o.Name, Endpoint: o.Engine, Key: o.EngineKey, Model: o.Model, LoRA: o.LoRA, local: true,
		ready: o.Ready, client: &http.Client{Transport: o.Engine.Transport(256)}, url: o.Engine.BaseURL()}
	g := &Gateway{opts: o}
	g.demand.Store(time.Now().UnixNano())
	g.pool.set([]*Replica{local})
	return g
}

// Handler serves /v1/*, /tokenize and /detokenize (authenticated, proxied), /healthz and /readyz;
// nothing else.
func (g *Gateway) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	// Anyone on the network can ask; the reason stays in the owner's connection file and logs,
	// since it may hold the engine's error text and file paths.
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ok, _ := g.ready(); !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("not ready\n"))
			return
		}
		w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("/v1/", g.proxy)
	mux.HandleFunc(loadAdapterPath, g.adapter)
	mux.HandleFunc(unloadAdapterPath, g.adapter)
	// vLLM's tokenizer endpoints, behind the same keys: llm-agent bench builds prompts of an
	// exact length in the served model's tokens with them.
	mux.HandleFunc("POST /tokenize", g.proxy)
	mux.HandleFunc("POST /detokenize", g.proxy)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "invalid_request_error", "not_found",
			fmt.Sprintf("%s is not served here; the API is under /v1", r.URL.Path))
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if g.closing.Load() {
			w.Header().Set("Connection", "close")
		}
		mux.ServeHTTP(w, r)
	})
}

func (g *Gateway) ready() (bool, string) {
	if g.successor.Load() != nil {
		return false, "handed over"
	}
	if g.draining.Load() {
		return false, "draining"
	}
	if g.pool.anyUp() {
		return true, ""
	}
	return g.opts.Ready()
}

// Drain answers new requests 503 and waits for those in flight until ctx ends; it returns how
// many were still running then.
func (g *Gateway) Drain(ctx context.Context) int64 {
	g.draining.Store(true)
	done := make(chan struct{})
	go func() {
		g.inflight.Wait()
		close(done)
	}()
	select {
	case <-done:
		return 0
	case <-ctx.Done():
		return g.active.Load()
	}
}

// writeError answers in OpenAI's error format.
func writeError(w http.ResponseWriter, status int, typ, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"message": msg, "type": typ, "param": nil, "code": code}})
}

// endpoint names a /v1 path for metrics, with the set of labels kept small.
func endpoint(path string) string {
	switch path {
	case "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/tokenize", "/detokenize",
		loadAdapterPath, unloadAdapterPath:
		return path
	}
	if strings.HasPrefix(path, "/v1/models/") {
		return "/v1/models"
	}
	return "/v1/other"
}

// exchange is what the gateway learns about one request for the audit log and metrics.
type exchange struct {
	start            time.Time
	key              Key
	endpoint, model  string
	stream           bool
	status           int
	prompt, complete int
	ttft             time.Duration
	err              string
	maxTokens        int    // what the request asks for at most
	throttledBy      string // the key's limit that answered 429
}

func (g *Gateway) proxy(w http.ResponseWriter, r *http.Request) {
	x := &exchange{start: time.Now(), endpoint: endpoint(r.URL.Path)}
	defer g.record(x)
	key, ok := g.authenticate(w, r, x)
	if !ok {
		return // answered
	}
	g.sawDemand(x.start)
	g.inflight.Add(1)
	g.active.Add(1)
	defer func() {
		g.active.Add(-1)
		g.inflight.Done()
	}()
	if !g.admit(key.Name) {
		x.status = http.StatusTooManyRequests
		w.Header().Set("Retry-After", "1")
		writeError(w, x.status, "rate_limit_error", "too_many_requests_in_flight",
			"too many requests in flight for this key or for the service; retry shortly")
		return
	}
	defer g.release(key.Name)
	if ok, _ := g.ready(); !ok {
		g.unavailable(w, r, x, "the model is not ready; retry shortly")
		return
	}
	body, injected, err := g.requestBody(w, r, x)
	if err != nil {
		return // answered
	}
	if id, ok := strings.CutPrefix(r.URL.Path, "/v1/models/"); ok {
		x.model = auditField(id, maxModelField)
	}
	if key.Restricted() && (r.Method == http.MethodPost || x.model != "") && !key.Allows(x.model) {
		g.modelNotFound(w, x)
		return
	}
	model, ok := g.pool.route(x.model)
	if !ok {
		g.modelNotFound(w, x)
		return
	}
	if model != "" && r.Method == http.MethodGet && r.URL.Path == "/v1/models" {
		g.listModels(w, r, x)
		return
	}
	now := time.Now()
	if q := g.quotas.of(key, now); q != nil {
		reserved, limit, retry := q.admit(x.maxTokens, now)
		if limit != "" {
			g.throttled(w, x, limit, retry)
			return
		}
		defer func() { q.done(reserved, x.prompt+x.complete) }()
	}
	g.forward(w, r, x, body, injected, model)
}

// authenticate finds the key a request presents; without a valid one it answers 401.
func (g *Gateway) authenticate(w http.ResponseWriter, r *http.Request, x *exchange) (Key, bool) {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		x.status = http.StatusUnauthorized
		writeError(w, x.status, "invalid_request_error", "invalid_api_key",
			"missing API key: send it as the header Authorization: Bearer <key>")
		return Key{}, false
	}
	key, ok := g.opts.Keys.Current().Lookup(token)
	if !ok {
		x.status = http.StatusUnauthorized
		writeError(w, x.status, "invalid_request_error", "invalid_api_key", "incorrect API key")
		return Key{}, false
	}
	x.key = key
	return key, true
}

// engineRequest is the client's request as the engine gets it: the body the gateway may have
// rewritten, the client's content headers, and the engine's own key in place of the client's.
func (g *Gateway) engineRequest(r *http.Request, body []byte, rep *Replica) (*http.Request, error) {
	req, err := http.NewRequestWithContext(r.Context(), r.Method, rep.url+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	for _, h := range []string{"Content-Type", "Accept", "User-Agent", "X-Request-Id", "OpenAI-Organization", "OpenAI-Project"} {
		if v := r.Header.Get(h); v != "" {
			req.Header.Set(h, v)
		}
	}
	req.Header.Set("Authorization", "Bearer "+rep.Key)
	return req, nil
}

// modelNotFound answers a model the key may not use as the engine answers one it does not
// serve, without the engine's list of the names it does serve: the key learns nothing of the
// models it may not use.
func (g *Gateway) modelNotFound(w http.ResponseWriter, x *exchange) {
	x.status, x.err = http.StatusNotFound, "model not found or not allowed for this key"
	b, _ := json.Marshal(map[string]any{"error": map[string]any{"message": fmt.Sprintf("The model `%s` does not exist.", x.model),
		"type": "NotFoundError", "param": "model", "code": http.StatusNotFound}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(x.status)
	w.Write(b)
}

// throttled answers 429 for a key past one of its limits, as OpenAI's API does.
func (g *Gateway) throttled(w http.ResponseWriter, x *exchange, limit string, retry time.Duration) {
	secs := max(1, int(math.Ceil(retry.Seconds())))
	x.status, x.err, x.throttledBy = http.StatusTooManyRequests, "rate limit: "+limit, limit
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	writeError(w, x.status, "rate_limit_error", "rate_limit_exceeded",
		fmt.Sprintf("rate limit reached for this key (%s); retry after %d s", limit, secs))
}

func (g *Gateway) unavailable(w http.ResponseWriter, r *http.Request, x *exchange, msg string) {
	if g.handedOver(w, r, x) {
		return
	}
	x.status = http.StatusServiceUnavailable
	w.Header().Set(UnavailableHeader, "1")
	w.Header().Set("Retry-After", strconv.Itoa(int(g.opts.RetryAfter.Seconds())))
	writeError(w, x.status, "service_unavailable", "engine_unavailable", msg)
}

// record writes the audit line and the metrics of one request.
func (g *Gateway) record(x *exchange) {
	if x.status == 0 {
		x.status = http.StatusInternalServerError
	}
	latency := time.Since(x.start)
	if g.opts.Metrics != nil {
		g.opts.Metrics.observe(x, latency)
	}
	if g.opts.Audit == nil || x.key.Name == "" {
		return
	}
	rec := Record{Time: x.start.UTC(), Key: x.key.Name, Project: x.key.Project, Endpoint: x.endpoint, Model: x.model,
		Status: x.status, Stream: x.stream, PromptTokens: x.prompt, CompletionTokens: x.complete,
		LatencySeconds: latency.Seconds(), Error: x.err}
	if x.stream && x.ttft > 0 {
		rec.TTFTSeconds = x.ttft.Seconds()
	}
	if err := g.opts.Audit.Write(rec); err != nil {
		g.opts.Logger.Error("audit write failed", "error", err)
	}
}
