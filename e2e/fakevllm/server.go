package main

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// server answers like vLLM's OpenAI-compatible API server.
type server struct {
	o          *options
	keys       []string
	tokenDelay time.Duration
	// echo answers a chat with the words of its last message (FAKEVLLM_ECHO=1).
	echo bool
	reg  *prometheus.Registry
	// fetches is the test double's own count of its /metrics fetches (vLLM has none): a test
	// can tell who fetched the engine's series, and how often.
	fetches prometheus.Counter
	m       vllmMetrics

	mu     sync.Mutex
	hung   chan struct{} // non-nil while hanging; closed to release
	nextID int
	// adapters are the LoRA adapters served, name to path.
	adapters map[string]string
	// seqs holds a place for each sequence running, with --max-num-seqs; nil for no bound.
	seqs chan struct{}
}

// vllmMetrics carries vLLM's metric names and labels (model_name, engine).
type vllmMetrics struct {
	running, waiting, kvCache                   *prometheus.GaugeVec
	promptTokens, generationTokens, success     *prometheus.CounterVec
	ttft, itl, e2e, queue, promptLen, genLength *prometheus.HistogramVec
}

func newServer(o *options, keys []string, tokenDelay time.Duration) *server {
	s := &server{o: o, keys: keys, tokenDelay: tokenDelay, reg: prometheus.NewRegistry(), adapters: map[string]string{},
		fetches: prometheus.NewCounter(prometheus.CounterOpts{Name: "fakevllm_metrics_fetches_total",
			Help: "Fetches of this test double's /metrics, this one included."})}
	s.reg.MustRegister(s.fetches)
	for _, m := range o.loraModules {
		s.adapters[m.Name] = m.Path
	}
	if o.maxNumSeqs > 0 {
		s.seqs = make(chan struct{}, o.maxNumSeqs)
	}
	labels := []string{"model_name", "engine"}
	gauge := func(name, help string) *prometheus.GaugeVec {
		g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
		s.reg.MustRegister(g)
		return g
	}
	counter := func(name, help string, extra ...string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, append(append([]string{}, labels...), extra...))
		s.reg.MustRegister(c)
		return c
	}
	hist := func(name, help string, buckets []float64) *prometheus.HistogramVec {
		h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, labels)
		s.reg.MustRegister(h)
		return h
	}
	lat := []float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80}
	toks := []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000}
	s.m = vllmMetrics{
		running:          gauge("vllm:num_requests_running", "Number of requests in model execution batches."),
		waiting:          gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed."),
		kvCache:          gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."),
		promptTokens:     counter("vllm:prompt_tokens_total", "Number of prefill tokens processed."),
		generationTokens: counter("vllm:generation_tokens_total", "Number of generation tokens processed."),
		success:          counter("vllm:request_success_total", "Count of successfully processed requests.", "finished_reason"),
		ttft:             hist("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", lat),
		itl:              hist("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", lat),
		e2e:              hist("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", lat),
		queue:            hist("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", lat),
		promptLen:        hist("vllm:request_prompt_tokens", "Number of prefill tokens processed.", toks),
		genLength:        hist("vllm:request_generation_tokens", "Number of generation tokens processed.", toks),
	}
	// vLLM exposes its gauges from the start, at zero.
	for _, g := range []*prometheus.GaugeVec{s.m.running, s.m.waiting, s.m.kvCache} {
		g.WithLabelValues(o.servedName, "0").Set(0)
	}
	for _, c := range []*prometheus.CounterVec{s.m.promptTokens, s.m.generationTokens} {
		c.WithLabelValues(o.servedName, "0")
	}
	for _, h := range []*prometheus.HistogramVec{s.m.ttft, s.m.itl, s.m.e2e, s.m.queue, s.m.promptLen, s.m.genLength} {
		h.WithLabelValues(o.servedName, "0")
	}
	return s
}

func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.HandleFunc("GET /version", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"version": "0.0.0+fakevllm-test-double"})
	})
	metrics := promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		s.fetches.Inc()
		metrics.ServeHTTP(w, r)
	})
	mux.HandleFunc("POST /tokenize", s.tokenize)
	mux.HandleFunc("GET /v1/models", s.auth(s.models))
	mux.HandleFunc("POST /v1/chat/completions", s.auth(s.complete(true)))
	mux.HandleFunc("POST /v1/completions", s.auth(s.complete(false)))
	if runtimeLoRA() {
		mux.HandleFunc("POST /v1/load_lora_adapter", s.auth(s.loadAdapter))
		mux.HandleFunc("POST /v1/unload_lora_adapter", s.auth(s.unloadAdapter))
	}
	return s.hangable(mux)
}

// hangable makes every request wait while the server hangs.
func (s *server) hangable(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		hung := s.hung
		s.mu.Unlock()
		if hung != nil {
			select {
			case <-hung:
			case <-r.Context().Done():
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

func (s *server) hang() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hung == nil {
		s.hung = make(chan struct{})
	}
}

func (s *server) unhang() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hung != nil {
		close(s.hung)
		s.hung = nil
	}
}

// auth guards a /v1 route with the API keys, as vLLM's --api-key does.
func (s *server) auth(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if len(s.keys) > 0 {
			got := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
			ok := false
			for _, k := range s.keys {
				if subtle.ConstantTimeCompare([]byte(got), []byte(k)) == 1 {
					ok = true
				}
			}
			if !ok {
				writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "Unauthorized"})
				return
			}
		}
		h(w, r)
	}
}

func (s *server) models(w http.ResponseWriter, r *http.Request) {
	data := []map[string]any{{
		"id": s.o.servedName, "object": "model", "created": time.Now().Unix(),
		"owned_by": "vllm", "root": s.o.model, "parent": nil, "max_model_len": max(s.o.maxModelLen, 2048),
	}}
	s.mu.Lock()
	names := slices.Sorted(maps.Keys(s.adapters))
	for _, name := range names {
		data = append(data, map[string]any{"id": name, "object": "model", "created": time.Now().Unix(),
			"owned_by": "vllm", "root": s.adapters[name], "parent": s.o.servedName})
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": data})
}

// tokenize answers as vLLM's /tokenize does; the test double's tokens are its words, each
// word's id a hash of it.
func (s *server) tokenize(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Prompt string `json:"prompt"`
	}
	json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req)
	fields := strings.Fields(req.Prompt)
	tokens := make([]int, len(fields))
	for i, f := range fields {
		h := fnv.New32a()
		h.Write([]byte(f))
		tokens[i] = int(h.Sum32() % 50000)
	}
	writeJSON(w, http.StatusOK, map[string]any{"count": len(tokens), "max_model_len": max(s.o.maxModelLen, 2048), "tokens": tokens, "token_strs": nil})
}

// promptTokens counts a completion prompt: a text's words, or the token ids of a list.
func promptTokens(p any) int {
	if ids, ok := p.([]any); ok {
		return len(ids)
	}
	return len(strings.Fields(fmt.Sprint(p)))
}

// request is the part of a completion request the fake reads.
type request struct {
	Model    string `json:"model"`
	Prompt   any    `json:"prompt"`
	Messages []struct {
		Content any `json:"content"`
	} `json:"messages"`
	MaxTokens     *int `json:"max_tokens"`
	Stream        bool `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	Priority *int `json:"priority"`
}

func errorBody(msg, typ string, code int) map[string]any {
	return map[string]any{"object": "error", "message": msg, "type": typ, "param": nil, "code": code}
}

var words = strings.Fields("the quick brown fox jumps over the lazy dog while a test double pretends to be a large language model")

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
