package gateway

import (
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/vllm"
)

// capacityEngine stands in for an engine of fixed capacity: seqs sequences at once, each token
// after perToken; the others wait their turn.
func capacityEngine(t *testing.T, seqs int, perToken time.Duration) *httptest.Server {
	slots := make(chan struct{}, seqs)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			MaxTokens int `json:"max_tokens"`
		}
		b, _ := io.ReadAll(r.Body)
		fmt.Sscanf(string(b[strings.Index(string(b), `"max_tokens":`)+len(`"max_tokens":`):]), "%d", &req.MaxTokens)
		slots <- struct{}{}
		time.Sleep(time.Duration(req.MaxTokens) * perToken)
		<-slots
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"usage":{"prompt_tokens":1,"completion_tokens":%d,"total_tokens":%d}}`, req.MaxTokens, req.MaxTokens+1)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestLeastInFlightBeatsRoundRobin runs the same mix of short and long requests through the
// gateway over three replicas of fixed capacity, once routed round-robin and once to the
// replica with the fewest in flight, and compares the p99 of the request latency. Set
// LLM_AGENT_ROUTING_OUT to keep the figures.
func TestLeastInFlightBeatsRoundRobin(t *testing.T) {
	if testing.Short() {
		t.Skip("a benchmark of a few seconds")
	}
	const (
		replicas = 3
		seqs     = 2
		perToken = time.Millisecond
		clients  = 9
		requests = 600
	)
	// One request in ten is long: 100 tokens, the others 5.
	r := rand.New(rand.NewSource(1))
	lens := make([]int, requests)
	for i := range lens {
		lens[i] = 5
		if r.Intn(10) == 0 {
			lens[i] = 100
		}
	}
	run := func(roundRobin bool) (p50, p99 time.Duration, rps float64) {
		f := newFixture(t, capacityEngine(t, seqs, perToken).Config.Handler.ServeHTTP, false, func(o *Options) {
			o.Name, o.MaxBody = "node1", 1<<20
		})
		f.gw.pool.roundRobin = roundRobin
		var reps []*Replica
		for i := 2; i <= replicas; i++ {
			u, _ := url.Parse(capacityEngine(t, seqs, perToken).URL)
			port, _ := strconv.Atoi(u.Port())
			rep := NewReplica("node"+strconv.Itoa(i), vllm.Endpoint{Host: u.Hostname(), Port: port}, "k")
			rep.SetUp(true)
			reps = append(reps, rep)
		}
		f.gw.SetReplicas(reps)
		next := make(chan int)
		go func() {
			for i := range lens {
				next <- i
			}
			close(next)
		}()
		var mu sync.Mutex
		var lat []time.Duration
		var wg sync.WaitGroup
		start := time.Now()
		for range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					t0 := time.Now()
					resp, body := f.do(t, "POST", "/v1/completions", aliceKey, `{"model":"m","prompt":"x","max_tokens":`+strconv.Itoa(lens[i])+`}`)
					require.Equal(t, http.StatusOK, resp.StatusCode, body)
					mu.Lock()
					lat = append(lat, time.Since(t0))
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		elapsed := time.Since(start)
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		return lat[len(lat)/2], lat[len(lat)*99/100], float64(len(lat)) / elapsed.Seconds()
	}
	var out strings.Builder
	fmt.Fprintf(&out, "# %d replicas of %d sequences at once, %v per token; %d requests (1 in 10 of 100 tokens, the others 5) from %d clients\n",
		replicas, seqs, perToken, requests, clients)
	rr50, rr99, rrRate := run(true)
	li50, li99, liRate := run(false)
	fmt.Fprintf(&out, "round-robin:     p50 %6.1f ms  p99 %6.1f ms  %6.1f req/s\n", ms(rr50), ms(rr99), rrRate)
	fmt.Fprintf(&out, "least-in-flight: p50 %6.1f ms  p99 %6.1f ms  %6.1f req/s\n", ms(li50), ms(li99), liRate)
	fmt.Fprintf(&out, "p99 ratio least-in-flight / round-robin: %.2f\n", float64(li99)/float64(rr99))
	t.Log("\n" + out.String())
	if path := os.Getenv("LLM_AGENT_ROUTING_OUT"); path != "" {
		require.NoError(t, os.WriteFile(path, []byte(out.String()), 0o644))
	}
	assert.Less(t, li99, rr99, "least-in-flight routing has the lower p99 latency")
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
