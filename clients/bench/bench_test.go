package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// server is a small OpenAI-compatible stand-in: prompts of token ids count as their length,
// text as its words; it streams max_tokens chunks and a usage chunk, as vLLM does.
type server struct {
	*httptest.Server
	requests atomic.Int64
	inflight atomic.Int64
	peak     atomic.Int64
	delay    time.Duration // per token
	fail     atomic.Bool   // answer 500
	noUsage  bool
	tokenize bool
	lastBody atomic.Value
}

func newServer(t *testing.T) *server {
	s := &server{tokenize: true}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer k" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		fmt.Fprint(w, `{"data":[{"id":"tiny"}]}`)
	})
	mux.HandleFunc("POST /tokenize", func(w http.ResponseWriter, r *http.Request) {
		if !s.tokenize {
			http.NotFound(w, r)
			return
		}
		var req struct{ Prompt string }
		json.NewDecoder(r.Body).Decode(&req)
		ids := []int{}
		for i := range strings.Fields(req.Prompt) {
			ids = append(ids, 100+i%50)
		}
		json.NewEncoder(w).Encode(map[string]any{"tokens": ids, "count": len(ids)})
	})
	stream := func(chat bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			s.requests.Add(1)
			n := s.inflight.Add(1)
			defer s.inflight.Add(-1)
			for p := s.peak.Load(); n > p && !s.peak.CompareAndSwap(p, n); p = s.peak.Load() {
			}
			if s.fail.Load() {
				http.Error(w, `{"error":"boom"}`, http.StatusInternalServerError)
				return
			}
			var req struct {
				Prompt    any
				Messages  []map[string]any
				MaxTokens int `json:"max_tokens"`
			}
			b := new(bytes.Buffer)
			b.ReadFrom(r.Body)
			s.lastBody.Store(b.String())
			json.Unmarshal(b.Bytes(), &req)
			prompt := 0
			switch p := req.Prompt.(type) {
			case []any:
				prompt = len(p)
			case string:
				prompt = len(strings.Fields(p))
			}
			for _, m := range req.Messages {
				prompt += len(strings.Fields(fmt.Sprint(m["content"])))
			}
			w.Header().Set("Content-Type", "text/event-stream")
			f := w.(http.Flusher)
			for i := 0; i < req.MaxTokens; i++ {
				select {
				case <-time.After(s.delay):
				case <-r.Context().Done():
					return
				}
				if chat {
					fmt.Fprintf(w, "data: {\"choices\":[{\"delta\":{\"content\":\"t%d \"}}]}\n\n", i)
				} else {
					fmt.Fprintf(w, "data: {\"choices\":[{\"text\":\"t%d \"}]}\n\n", i)
				}
				f.Flush()
			}
			if !s.noUsage {
				fmt.Fprintf(w, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d}}\n\n", prompt, req.MaxTokens)
			}
			fmt.Fprint(w, "data: [DONE]\n\n")
		}
	}
	mux.HandleFunc("POST /v1/completions", stream(false))
	mux.HandleFunc("POST /v1/chat/completions", stream(true))
	s.Server = httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s
}

func opts(s *server) Options {
	return Options{BaseURL: s.URL + "/v1", APIKey: "k", Endpoint: "completions", Dataset: DatasetRandom,
		InputLen: 16, OutputLen: 8, NumPrompts: 20, Burstiness: 1, IgnoreEOS: true, Goodput: Goodput{}}
}

func TestRandomWorkloadIsExactAndBounded(t *testing.T) {
	s := newServer(t)
	o := opts(s)
	o.MaxConcurrency = 3
	o.Goodput = Goodput{"ttft": 10000}
	reqs, err := Prepare(context.Background(), &o)
	require.NoError(t, err)
	assert.Equal(t, "tiny", o.Model, "the model comes from /v1/models")
	require.Len(t, reqs, 20)
	for _, r := range reqs {
		require.Len(t, r.Prompt, 16, "a prompt of token ids, exactly --input-len long")
		for _, id := range r.Prompt.([]int) {
			assert.GreaterOrEqual(t, id, 100, "ids from the server's tokenizer")
		}
	}
	var progress bytes.Buffer
	o.Progress = &progress
	r := Run(context.Background(), o, reqs, math.Inf(1))
	assert.Equal(t, 20, r.Completed)
	assert.Zero(t, r.Failed)
	assert.Equal(t, 20*16, r.TotalInputTokens)
	assert.Equal(t, 20*8, r.TotalOutputTokens)
	assert.Equal(t, 20, r.InputChecked)
	assert.Zero(t, r.InputMismatched)
	assert.LessOrEqual(t, s.peak.Load(), int64(3), "never more than --max-concurrency in flight")
	assert.InDelta(t, r.RequestThroughput, r.RequestGoodput, 1e-9, "every request meets a loose target")
	assert.Greater(t, r.TTFT.Median, 0.0)
	assert.Contains(t, progress.String(), "20/20 requests")
	assert.Contains(t, s.lastBody.Load().(string), `"ignore_eos":true`)
	assert.Contains(t, s.lastBody.Load().(string), `"include_usage":true`)
	assert.Equal(t, "inf", r.Rate)

	var table bytes.Buffer
	require.NoError(t, r.WriteTable(&table))
	assert.Regexp(t, `Input length off \(requests\):\s+0\n`, table.String())
	for _, want := range []string{"Successful requests:                     20", "Maximum request concurrency:             3",
		"Request goodput (req/s):", "Median TTFT (ms):", "P95 TPOT (ms):", "P99 E2EL (ms):"} {
		assert.Contains(t, table.String(), want)
	}
}

func TestPoissonRateAndSweep(t *testing.T) {
	s := newServer(t)
	o := opts(s)
	o.OutputLen = 2
	reqs, err := Prepare(context.Background(), &o)
	require.NoError(t, err)
	start := time.Now()
	r := Run(context.Background(), o, reqs, 200)
	// 19 gaps of mean 5 ms: the run takes time, far less than a second.
	assert.Greater(t, time.Since(start), 20*time.Millisecond)
	assert.Equal(t, 20, r.Completed)
	assert.Equal(t, "200", r.Rate)
	var sweep bytes.Buffer
	require.NoError(t, WriteSweep(&sweep, []Result{r, r}))
	assert.Equal(t, 3, strings.Count(sweep.String(), "\n"))

	o.Burstiness = 0.5
	r = Run(context.Background(), o, reqs, 400)
	assert.Equal(t, 20, r.Completed)
}

func TestTimeBoundAbortsTheRest(t *testing.T) {
	s := newServer(t)
	s.delay = 50 * time.Millisecond
	o := opts(s)
	o.NumPrompts, o.OutputLen, o.MaxConcurrency = 10, 100, 2
	reqs, err := Prepare(context.Background(), &o)
	require.NoError(t, err)
	o.Duration = 300 * time.Millisecond
	start := time.Now()
	r := Run(context.Background(), o, reqs, 5)
	assert.Less(t, time.Since(start), 3*time.Second, "the run stops at its time bound")
	assert.Equal(t, 10, r.Aborted+r.Completed+r.Failed)
	assert.Equal(t, 10, r.Aborted)
	var table bytes.Buffer
	require.NoError(t, r.WriteTable(&table))
	assert.Regexp(t, `Aborted at the time bound:\s+10\n`, table.String())
}

func TestChatFailuresAndNoUsage(t *testing.T) {
	s := newServer(t)
	s.noUsage = true
	o := opts(s)
	o.Endpoint, o.Model = "chat", "tiny"
	reqs, err := Prepare(context.Background(), &o)
	require.NoError(t, err)
	assert.IsType(t, "", reqs[0].Prompt, "chat prompts are text")
	r := Run(context.Background(), o, reqs, math.Inf(1))
	assert.Equal(t, 20, r.Completed)
	assert.Equal(t, 20*8, r.TotalOutputTokens, "without usage, a token per chunk")
	assert.Zero(t, r.InputChecked)

	s.fail.Store(true)
	r = Run(context.Background(), o, reqs, math.Inf(1))
	assert.Equal(t, 20, r.Failed)
	require.Len(t, r.Errors, 1, "the same error once")
	assert.Contains(t, r.Errors[0], "500")
	ok, lines := SpecSLO.Check(r)
	assert.False(t, ok)
	assert.Contains(t, lines[0], "MISSED")
}

func TestPrepareRefusesBadInput(t *testing.T) {
	s := newServer(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.jsonl")
	require.NoError(t, os.WriteFile(bad, []byte(`{"text": "no prompt"}`+"\n"), 0o644))
	empty := filepath.Join(dir, "empty.jsonl")
	require.NoError(t, os.WriteFile(empty, nil, 0o644))
	for name, tc := range map[string]struct {
		edit func(*Options)
		want string
	}{
		"endpoint":       {func(o *Options) { o.Endpoint = "embeddings" }, "completions or chat"},
		"prompts":        {func(o *Options) { o.NumPrompts = 0 }, "--num-prompts"},
		"lengths":        {func(o *Options) { o.InputLen = 0 }, "--input-len"},
		"concurrency":    {func(o *Options) { o.MaxConcurrency = -1 }, "cannot be negative"},
		"burstiness":     {func(o *Options) { o.Burstiness = 0 }, "--burstiness"},
		"dataset":        {func(o *Options) { o.Dataset = "alpaca"; o.DatasetPath = "x" }, "random, jsonl or sharegpt"},
		"no path":        {func(o *Options) { o.Dataset = DatasetJSONL }, "needs --dataset-path"},
		"missing file":   {func(o *Options) { o.Dataset, o.DatasetPath = DatasetJSONL, filepath.Join(dir, "none") }, "prompt file"},
		"bad jsonl":      {func(o *Options) { o.Dataset, o.DatasetPath = DatasetJSONL, bad }, "bad.jsonl:1"},
		"empty jsonl":    {func(o *Options) { o.Dataset, o.DatasetPath = DatasetJSONL, empty }, "has no prompts"},
		"bad sharegpt":   {func(o *Options) { o.Dataset, o.DatasetPath = DatasetShareGPT, bad }, "is not a ShareGPT file"},
		"wrong key":      {func(o *Options) { o.APIKey = "nope" }, "refused the API key"},
		"unreachable":    {func(o *Options) { o.BaseURL = "http://127.0.0.1:1/v1" }, "cannot reach"},
		"no tokenizer":   {func(o *Options) { s.tokenize = false }, "exact input lengths need the server's tokenizer"},
		"no such models": {func(o *Options) { o.BaseURL = s.URL + "/nothing/v1" }, "with no model"},
	} {
		t.Run(name, func(t *testing.T) {
			s.tokenize = true
			o := opts(s)
			tc.edit(&o)
			_, err := Prepare(context.Background(), &o)
			require.ErrorIs(t, err, ErrInput)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestFileWorkloads(t *testing.T) {
	s := newServer(t)
	dir := t.TempDir()
	jl := filepath.Join(dir, "p.jsonl")
	require.NoError(t, os.WriteFile(jl, []byte(`{"prompt": "one two three"}`+"\n\n"+`{"prompt": "four", "output_len": 3}`+"\n"), 0o644))
	o := opts(s)
	o.Dataset, o.DatasetPath, o.NumPrompts = DatasetJSONL, jl, 5
	reqs, err := Prepare(context.Background(), &o)
	require.NoError(t, err)
	require.Len(t, reqs, 5)
	assert.Equal(t, []int{8, 3, 8, 3, 8}, []int{reqs[0].OutputLen, reqs[1].OutputLen, reqs[2].OutputLen, reqs[3].OutputLen, reqs[4].OutputLen})
	r := Run(context.Background(), o, reqs, math.Inf(1))
	assert.Equal(t, 3+1+3+1+3, r.TotalInputTokens, "the server's prompt_tokens")

	long := strings.Repeat("word ", 1100)
	sg := filepath.Join(dir, "sg.json")
	convs := []map[string]any{
		{"conversations": []map[string]string{{"from": "human", "value": "tell me about rivers please"}, {"from": "gpt", "value": "rivers flow to the sea mostly"}}},
		{"conversations": []map[string]string{{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello there how are you"}}},
		{"conversations": []map[string]string{{"from": "human", "value": long}, {"from": "gpt", "value": "far too long a prompt"}}},
		{"conversations": []map[string]string{{"from": "human", "value": "only one turn here"}}},
	}
	b, _ := json.Marshal(convs)
	require.NoError(t, os.WriteFile(sg, b, 0o644))
	o = opts(s)
	o.Dataset, o.DatasetPath, o.NumPrompts = DatasetShareGPT, sg, 10
	reqs, err = Prepare(context.Background(), &o)
	require.NoError(t, err)
	require.Len(t, reqs, 1, "short, over-long and one-turn conversations are left out")
	assert.Equal(t, 6, reqs[0].OutputLen, "the answer's length in the server's tokens")
}

func TestSummarizeMatchesVLLMDefinitions(t *testing.T) {
	ms := time.Millisecond
	outs := []Output{
		{Success: true, PromptLen: 10, WantPromptLen: 10, OutputTokens: 5, TTFT: 100 * ms, Latency: 500 * ms, ITL: []time.Duration{100 * ms, 100 * ms, 100 * ms, 100 * ms}},
		{Success: true, PromptLen: 11, WantPromptLen: 10, OutputTokens: 1, TTFT: 300 * ms, Latency: 300 * ms},
		{Success: false, Err: "boom"},
	}
	r := Summarize(outs, 2*time.Second, Goodput{"ttft": 200, "tpot": 150})
	assert.Equal(t, 2, r.Completed)
	assert.Equal(t, 1, r.Failed)
	assert.Equal(t, 21, r.TotalInputTokens)
	assert.Equal(t, 6, r.TotalOutputTokens)
	assert.InDelta(t, 1.0, r.RequestThroughput, 1e-9)
	assert.InDelta(t, 0.5, r.RequestGoodput, 1e-9, "the second misses ttft")
	assert.InDelta(t, 3.0, r.OutputThroughput, 1e-9)
	assert.InDelta(t, 13.5, r.TotalTokenThroughput, 1e-9)
	assert.InDelta(t, 100.0, r.TPOT.Mean, 1e-9, "(500-100)/(5-1); a one-token request has no TPOT")
	assert.InDelta(t, 200.0, r.TTFT.Median, 1e-9)
	assert.InDelta(t, 100+200*0.99, r.TTFT.P99, 1e-9, "numpy's linear percentile")
	assert.InDelta(t, 100.0, r.TTFT.Std, 1e-9)
	assert.Equal(t, 2, r.InputChecked)
	assert.Equal(t, 1, r.InputMismatched)
	assert.Equal(t, []string{"boom"}, r.Errors)
	assert.Equal(t, Stats{}, stats(nil))

	ok, lines := SLO{MinOutputThroughput: 1, MaxP99TTFT: 1000}.Check(Summarize(outs[:2], 2*time.Second, nil))
	assert.True(t, ok, "%v", lines)
}

func TestParseGoodputAndRates(t *testing.T) {
	g, err := ParseGoodput([]string{"ttft:200 tpot:50", "e2el:5000"})
	require.NoError(t, err)
	assert.Equal(t, Goodput{"ttft": 200, "tpot": 50, "e2el": 5000}, g)
	for _, bad := range []string{"ttft", "ttft:x", "itl:5", "ttft:-1", "ttft:inf"} {
		_, err := ParseGoodput([]string{bad})
		assert.ErrorIs(t, err, ErrInput, bad)
	}
	rates, err := ParseRates("1, 2.5,inf")
	require.NoError(t, err)
	assert.Equal(t, []float64{1, 2.5, math.Inf(1)}, rates)
	for _, bad := range []string{"0", "-1", "x", ""} {
		_, err := ParseRates(bad)
		assert.ErrorIs(t, err, ErrInput, bad)
	}
}
