// Package bench is a load generator for OpenAI-compatible endpoints. It measures what
// vllm bench serve measures, with the same names and definitions: request and token throughput,
// time to first token (TTFT), time per output token (TPOT), inter-token latency (ITL),
// end-to-end latency (E2EL) and goodput against service-level targets.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ErrInput marks what the user must fix; the command exits 2 on it.
var ErrInput = errors.New("bench")

// Options configure a benchmark.
type Options struct {
	// BaseURL is the API's base, ending in /v1; APIKey its key ("" for none).
	BaseURL, APIKey string
	// Model is the served model name ("" asks /v1/models).
	Model string
	// Endpoint is "completions" or "chat".
	Endpoint string
	// Dataset is random, jsonl or sharegpt; DatasetPath the file of the last two.
	Dataset, DatasetPath string
	// InputLen and OutputLen are the random workload's lengths in tokens; OutputLen is also
	// the jsonl workload's default.
	InputLen, OutputLen int
	// NumPrompts bounds each run in requests, Duration in time (0: no time bound).
	NumPrompts int
	Duration   time.Duration
	// MaxConcurrency bounds the requests in flight (0: none).
	MaxConcurrency int
	// Burstiness shapes the arrivals at a finite rate: 1 is a Poisson process.
	Burstiness float64
	// IgnoreEOS asks the server to generate OutputLen tokens whatever they are (vLLM).
	IgnoreEOS bool
	Goodput   Goodput
	Seed      uint64
	// Progress gets a progress bar, redrawn in place (nil: none).
	Progress io.Writer
}

// Prepare checks the options, finds the model and makes the workload's requests.
func Prepare(ctx context.Context, o *Options) ([]Request, error) {
	switch {
	case o.Endpoint != "completions" && o.Endpoint != "chat":
		return nil, fmt.Errorf("%w: --endpoint %q: completions or chat", ErrInput, o.Endpoint)
	case o.NumPrompts <= 0:
		return nil, fmt.Errorf("%w: --num-prompts must be at least 1", ErrInput)
	case o.InputLen <= 0 || o.OutputLen <= 0:
		return nil, fmt.Errorf("%w: --input-len and --output-len must be at least 1", ErrInput)
	case o.MaxConcurrency < 0 || o.Duration < 0:
		return nil, fmt.Errorf("%w: --max-concurrency and --duration cannot be negative", ErrInput)
	case o.Burstiness <= 0:
		return nil, fmt.Errorf("%w: --burstiness must be positive", ErrInput)
	case o.Dataset != DatasetRandom && o.DatasetPath == "":
		return nil, fmt.Errorf("%w: the %s dataset needs --dataset-path", ErrInput, o.Dataset)
	}
	c := newClient(*o, 1)
	if o.Model == "" {
		m, err := c.servedModel(ctx)
		if err != nil {
			return nil, err
		}
		o.Model = m
	}
	tok := tokenizer{c: c, model: o.Model}
	rng := rand.New(rand.NewPCG(o.Seed, 0x6c6c6d2d6167656e))
	switch o.Dataset {
	case DatasetRandom:
		reqs, err := randomRequests(ctx, tok, rng, o.NumPrompts, o.InputLen, o.OutputLen, o.Endpoint == "completions")
		if errors.Is(err, errNoTokenizer) {
			return nil, fmt.Errorf("%w: %s: exact input lengths need the server's tokenizer (vLLM's /tokenize); use --dataset jsonl", ErrInput, err)
		}
		return reqs, err
	case DatasetJSONL:
		return jsonlRequests(o.DatasetPath, o.NumPrompts, o.OutputLen)
	case DatasetShareGPT:
		return shareGPTRequests(ctx, tok, rng, o.DatasetPath, o.NumPrompts)
	}
	return nil, fmt.Errorf("%w: --dataset %q: random, jsonl or sharegpt", ErrInput, o.Dataset)
}

// Run sends the requests at rate (requests per second, +Inf: all at once) and returns the
// run's result. It ends when every request has ended, at o.Duration, or when ctx ends.
func Run(ctx context.Context, o Options, reqs []Request, rate float64) Result {
	conns := o.MaxConcurrency
	if conns == 0 {
		conns = len(reqs)
	}
	c := newClient(o, conns)
	defer c.http.CloseIdleConnections()
	if o.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Duration)
		defer cancel()
	}
	var done atomic.Int64
	stopProgress := progress(o.Progress, len(reqs), &done)
	start := time.Now()
	outs, aborted := c.sendAll(ctx, o, reqs, rate, &done)
	dur := time.Since(start)
	stopProgress()
	var kept []Output
	n := 0
	for i, o := range outs {
		if aborted[i] {
			n++
			continue
		}
		kept = append(kept, o)
	}
	res := Summarize(kept, dur, o.Goodput)
	res.RequestRate, res.MaxConcurrency, res.Aborted = rate, o.MaxConcurrency, n
	res.Rate = FormatRate(rate)
	return res
}

// sendAll sends reqs at rate, at most o.MaxConcurrency at once, counting each that ends in
// done; aborted marks those that ctx's end kept from being sent or cut short.
func (c *client) sendAll(ctx context.Context, o Options, reqs []Request, rate float64, done *atomic.Int64) (outs []Output, aborted []bool) {
	rng := rand.New(rand.NewPCG(o.Seed, 0x61727269766c73))
	var sem chan struct{}
	if o.MaxConcurrency > 0 {
		sem = make(chan struct{}, o.MaxConcurrency)
	}
	outs, aborted = make([]Output, len(reqs)), make([]bool, len(reqs))
	var wg sync.WaitGroup
	next := time.Now()
	for i, r := range reqs {
		if !math.IsInf(rate, 1) && i > 0 {
			// Gamma-distributed gaps of mean 1/rate; shape 1 (burstiness 1) is exponential.
			next = next.Add(time.Duration(gamma(rng, o.Burstiness, 1/(rate*o.Burstiness)) * float64(time.Second)))
			if !waitUntil(ctx, next) {
				abortFrom(aborted, i)
				break
			}
		}
		if sem != nil && !acquire(ctx, sem) {
			abortFrom(aborted, i)
			break
		}
		wg.Go(func() {
			outs[i] = c.send(ctx, o, r)
			if ctx.Err() != nil && !outs[i].Success {
				aborted[i] = true
			}
			if sem != nil {
				<-sem
			}
			done.Add(1)
		})
	}
	wg.Wait()
	return outs, aborted
}

// waitUntil waits for t; false when ctx ended first.
func waitUntil(ctx context.Context, t time.Time) bool {
	select {
	case <-time.After(time.Until(t)):
		return true
	case <-ctx.Done():
		return false
	}
}

// acquire takes a place in sem; false when ctx ended first.
func acquire(ctx context.Context, sem chan struct{}) bool {
	select {
	case sem <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

// abortFrom marks every request from i on as aborted.
func abortFrom(aborted []bool, i int) {
	for k := i; k < len(aborted); k++ {
		aborted[k] = true
	}
}

// gamma draws from a gamma distribution (Marsaglia and Tsang; shape below 1 by boosting).
func gamma(rng *rand.Rand, shape, scale float64) float64 {
	if shape < 1 {
		return gamma(rng, shape+1, scale) * math.Pow(rng.Float64(), 1/shape)
	}
	d := shape - 1.0/3
	c := 1 / math.Sqrt(9*d)
	for {
		x := rng.NormFloat64()
		v := 1 + c*x
		if v <= 0 {
			continue
		}
		v = v * v * v
		u := rng.Float64()
		if math.Log(u) < 0.5*x*x+d-d*v+d*math.Log(v) {
			return d * v * scale
		}
	}
}

// progress redraws a bar on w until the returned function is called.
func progress(w io.Writer, total int, done *atomic.Int64) func() {
	if w == nil {
		return func() {}
	}
	stop := make(chan struct{})
	finished := make(chan struct{})
	start := time.Now()
	draw := func() {
		n := int(done.Load())
		const width = 30
		filled := width * n / max(total, 1)
		fmt.Fprintf(w, "\r[%s%s] %d/%d requests, %.1f s", strings.Repeat("=", filled), strings.Repeat(" ", width-filled), n, total, time.Since(start).Seconds())
	}
	go func() {
		defer close(finished)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				draw()
			case <-stop:
				draw()
				fmt.Fprintln(w)
				return
			}
		}
	}()
	return func() {
		close(stop)
		<-finished
	}
}

// FormatRate writes a request rate as the tables and JSON show it: "inf" or the number.
func FormatRate(rate float64) string {
	if math.IsInf(rate, 1) {
		return "inf"
	}
	return strconv.FormatFloat(rate, 'g', -1, 64)
}

// ParseRates reads a comma-separated list of request rates, "inf" for all at once.
func ParseRates(s string) ([]float64, error) {
	var rates []float64
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "inf" {
			rates = append(rates, math.Inf(1))
			continue
		}
		v, err := strconv.ParseFloat(f, 64)
		if err != nil || v <= 0 || math.IsInf(v, 0) || math.IsNaN(v) {
			return nil, fmt.Errorf("%w: --request-rate %q: give requests per second above 0, or inf, comma-separated", ErrInput, f)
		}
		rates = append(rates, v)
	}
	return rates, nil
}
