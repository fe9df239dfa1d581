package bench

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Output is what one request gave, as vllm bench serve records it.
type Output struct {
	Success bool
	Err     string
	// PromptLen is the input length in tokens: the server's prompt_tokens when it reports it,
	// else what the workload meant. WantPromptLen is what the workload meant (0: unknown).
	PromptLen, WantPromptLen int
	OutputTokens             int
	Start                    time.Time
	TTFT                     time.Duration
	ITL                      []time.Duration // between successive chunks that carry choices
	Latency                  time.Duration   // start to the last such chunk
}

// Stats are the mean, median and percentiles of one latency, in milliseconds.
type Stats struct {
	Mean   float64 `json:"mean"`
	Median float64 `json:"median"`
	Std    float64 `json:"std"`
	P90    float64 `json:"p90"`
	P95    float64 `json:"p95"`
	P99    float64 `json:"p99"`
}

// Result is one run, with the names and definitions of vllm bench serve.
type Result struct {
	RequestRate          float64 `json:"-"`            // +Inf: all at once
	Rate                 string  `json:"request_rate"` // the same, "inf" or the number
	MaxConcurrency       int     `json:"max_concurrency"`
	Duration             float64 `json:"duration"` // seconds
	Completed            int     `json:"completed"`
	Failed               int     `json:"failed"`
	Aborted              int     `json:"aborted"` // still running at the time bound
	TotalInputTokens     int     `json:"total_input_tokens"`
	TotalOutputTokens    int     `json:"total_output_tokens"`
	RequestThroughput    float64 `json:"request_throughput"`
	RequestGoodput       float64 `json:"request_goodput"`
	OutputThroughput     float64 `json:"output_throughput"`
	TotalTokenThroughput float64 `json:"total_token_throughput"`
	TTFT                 Stats   `json:"ttft_ms"`
	TPOT                 Stats   `json:"tpot_ms"`
	ITL                  Stats   `json:"itl_ms"`
	E2EL                 Stats   `json:"e2el_ms"`
	// InputChecked requests had both a known input length and the server's prompt_tokens;
	// InputMismatched of them disagreed.
	InputChecked    int      `json:"input_len_checked"`
	InputMismatched int      `json:"input_len_mismatched"`
	Errors          []string `json:"errors,omitempty"` // the first few
}

// Goodput holds service-level targets in milliseconds; a request is good when it meets all.
type Goodput map[string]float64

// ParseGoodput reads "ttft:MS tpot:MS e2el:MS" (any of them, space or comma separated).
func ParseGoodput(specs []string) (Goodput, error) {
	g := Goodput{}
	for _, spec := range specs {
		for _, f := range strings.FieldsFunc(spec, func(r rune) bool { return r == ' ' || r == ',' }) {
			name, v, ok := strings.Cut(f, ":")
			ms, err := strconv.ParseFloat(v, 64)
			switch {
			case !ok || err != nil:
				return nil, fmt.Errorf("%w: --goodput %q: give NAME:MILLISECONDS, such as ttft:200", ErrInput, f)
			case name != "ttft" && name != "tpot" && name != "e2el":
				return nil, fmt.Errorf("%w: --goodput %q: the targets are ttft, tpot and e2el", ErrInput, f)
			case ms <= 0 || math.IsInf(ms, 0) || math.IsNaN(ms):
				return nil, fmt.Errorf("%w: --goodput %q: milliseconds must be positive", ErrInput, f)
			}
			g[name] = ms
		}
	}
	return g, nil
}

// Summarize computes a run's result; dur is the run's wall time.
func Summarize(outs []Output, dur time.Duration, goodput Goodput) Result {
	var r Result
	var ttfts, tpots, itls, e2els []float64
	good := 0
	const errorsKept = 5
	for _, o := range outs {
		if !o.Success {
			r.Failed++
			if len(r.Errors) < errorsKept && !slices.Contains(r.Errors, o.Err) {
				r.Errors = append(r.Errors, o.Err)
			}
			continue
		}
		r.Completed++
		out := max(o.OutputTokens, 1)
		r.TotalInputTokens += o.PromptLen
		r.TotalOutputTokens += out
		if o.WantPromptLen > 0 && o.PromptLen > 0 {
			r.InputChecked++
			if o.PromptLen != o.WantPromptLen {
				r.InputMismatched++
			}
		}
		ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
		tpot := 0.0 // one token: no time per output token, counted as 0 for goodput as vLLM does
		if out > 1 {
			tpot = ms(o.Latency-o.TTFT) / float64(out-1)
			tpots = append(tpots, tpot)
		}
		ttfts = append(ttfts, ms(o.TTFT))
		e2els = append(e2els, ms(o.Latency))
		for _, d := range o.ITL {
			itls = append(itls, ms(d))
		}
		if v, ok := goodput["ttft"]; ok && ms(o.TTFT) > v {
			continue
		}
		if v, ok := goodput["tpot"]; ok && tpot > v {
			continue
		}
		if v, ok := goodput["e2el"]; ok && ms(o.Latency) > v {
			continue
		}
		good++
	}
	s := dur.Seconds()
	if s <= 0 {
		s = math.SmallestNonzeroFloat64
	}
	r.Duration = dur.Seconds()
	r.RequestThroughput = float64(r.Completed) / s
	if len(goodput) > 0 {
		r.RequestGoodput = float64(good) / s
	}
	r.OutputThroughput = float64(r.TotalOutputTokens) / s
	r.TotalTokenThroughput = float64(r.TotalInputTokens+r.TotalOutputTokens) / s
	r.TTFT, r.TPOT, r.ITL, r.E2EL = stats(ttfts), stats(tpots), stats(itls), stats(e2els)
	return r
}

// stats computes mean, median, standard deviation and percentiles as numpy does (linear
// interpolation between the closest ranks); all zero for no values.
func stats(v []float64) Stats {
	if len(v) == 0 {
		return Stats{}
	}
	s := slices.Clone(v)
	sort.Float64s(s)
	sum := 0.0
	for _, x := range s {
		sum += x
	}
	mean := sum / float64(len(s))
	varsum := 0.0
	for _, x := range s {
		varsum += (x - mean) * (x - mean)
	}
	return Stats{Mean: mean, Median: percentile(s, 50), Std: math.Sqrt(varsum / float64(len(s))),
		P90: percentile(s, 90), P95: percentile(s, 95), P99: percentile(s, 99)}
}

// percentile of sorted values, numpy's default ("linear") method.
func percentile(sorted []float64, p float64) float64 {
	pos := p / 100 * float64(len(sorted)-1)
	lo := int(math.Floor(pos))
	hi := min(lo+1, len(sorted)-1)
	return sorted[lo] + (sorted[hi]-sorted[lo])*(pos-float64(lo))
}
