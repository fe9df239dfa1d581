package gateway

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/vllm"
)

// remote serves as another node's gateway would: it answers with its name, or 503 marked as the
// gateway's own when down.
type remote struct {
	name string
	srv  *httptest.Server
	mu   sync.Mutex
	down bool
	hold chan struct{} // when set, requests wait on it
	seen int
}

func newRemote(t *testing.T, name string) *remote {
	r := &remote{name: name}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		down, hold := r.down, r.hold
		if req.URL.Path != "/readyz" {
			r.seen++
		}
		r.mu.Unlock()
		if down {
			w.Header().Set(UnavailableHeader, "1")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		if req.URL.Path == "/readyz" {
			w.Write([]byte("ready\n"))
			return
		}
		if req.Header.Get("Authorization") != "Bearer replica-key" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if hold != nil {
			<-hold
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"served_by":%q,"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`, r.name)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *remote) replica() *Replica {
	u, _ := url.Parse(r.srv.URL)
	port, _ := strconv.Atoi(u.Port())
	rep := NewReplica(r.name, vllm.Endpoint{Host: u.Hostname(), Port: port}, "replica-key")
	rep.Model = "m"
	return rep
}

func (r *remote) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen
}

func localEngine(name string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"served_by":%q}`, name)
	}
}

func TestReplicasLeastInFlight(t *testing.T) {
	f := newFixture(t, localEngine("node1"), false, func(o *Options) { o.Name, o.Model = "node1", "m" })
	a, b := newRemote(t, "node2"), newRemote(t, "node3")
	f.gw.SetReplicas([]*Replica{a.replica(), b.replica()})
	changes := map[string]bool{}
	f.gw.CheckReplicas(context.Background(), time.Second, func(r *Replica, up bool) { changes[r.Name] = up })
	assert.Equal(t, map[string]bool{"node2": true, "node3": true}, changes)

	// node2 holds its requests: the next ones go to the others.
	a.hold = make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, _ := f.do(t, "POST", "/v1/completions", aliceKey, `{"model":"m","prompt":"x"}`)
			assert.Equal(t, http.StatusOK, resp.StatusCode)
		}()
	}
	require.Eventually(t, func() bool { return f.gw.Replicas()[1].InFlight() >= 1 }, 5*time.Second, 5*time.Millisecond)
	seen := map[string]int{}
	for range 20 {
		resp, body := f.do(t, "POST", "/v1/completions", aliceKey, `{"model":"m","prompt":"x"}`)
		require.Equal(t, http.StatusOK, resp.StatusCode, body)
		seen[resp.Header.Get(ReplicaHeader)]++
		assert.Contains(t, body, `"served_by":"`+resp.Header.Get(ReplicaHeader)+`"`, "the header names the replica that answered")
	}
	close(a.hold)
	wg.Wait()
	assert.Greater(t, seen["node1"], 5)
	assert.Greater(t, seen["node3"], 5)
	assert.LessOrEqual(t, seen["node2"], 1, "the busy replica gets (almost) nothing while the others are idle: %v", seen)

	c := NewReplicaCollector("node1", "9")
	assert.Equal(t, 0, testutil.CollectAndCount(c), "nothing before the gateway is bound")
	c.Bind(f.gw)
	assert.Equal(t, 9, testutil.CollectAndCount(c))
	assert.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(`
# HELP llm_agent_gateway_replica_up 1 while the replica (an engine, named by its node) is in the gateway's rotation.
# TYPE llm_agent_gateway_replica_up gauge
llm_agent_gateway_replica_up{job="9",model="m",node="node1",replica="node1"} 1
llm_agent_gateway_replica_up{job="9",model="m",node="node1",replica="node2"} 1
llm_agent_gateway_replica_up{job="9",model="m",node="node1",replica="node3"} 1
`), "llm_agent_gateway_replica_up"))
}

func TestReplicaFailover(t *testing.T) {
	f := newFixture(t, localEngine("node1"), false, func(o *Options) { o.Name = "node1" })
	a := newRemote(t, "node2")
	f.gw.SetReplicas([]*Replica{a.replica()})
	f.gw.CheckReplicas(context.Background(), time.Second, nil)
	f.ready.Store(false) // only node2 serves

	resp, body := f.do(t, "POST", "/v1/completions", aliceKey, `{"model":"m","prompt":"x"}`)
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	assert.Equal(t, "node2", resp.Header.Get(ReplicaHeader))

	// node2's gateway says its engine is not ready: the request goes to the local engine once
	// it is back, and node2 leaves the rotation until its /readyz says ready.
	a.mu.Lock()
	a.down = true
	a.mu.Unlock()
	resp, _ = f.do(t, "POST", "/v1/completions", aliceKey, `{"model":"m","prompt":"x"}`)
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "no replica ready")
	assert.Equal(t, "1", resp.Header.Get(UnavailableHeader))
	assert.False(t, f.gw.Replicas()[1].Up())
	f.ready.Store(true)
	resp, _ = f.do(t, "POST", "/v1/completions", aliceKey, `{"model":"m","prompt":"x"}`)
	assert.Equal(t, "node1", resp.Header.Get(ReplicaHeader))

	// A replica whose node refuses connections: the request goes elsewhere, at once.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	gone := NewReplica("node3", vllm.Endpoint{Host: "127.0.0.1", Port: port}, "replica-key")
	gone.SetUp(true)
	f.gw.SetReplicas([]*Replica{a.replica(), gone})
	for range 4 {
		resp, _ = f.do(t, "POST", "/v1/completions", aliceKey, `{"model":"m","prompt":"x"}`)
		assert.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, "node1", resp.Header.Get(ReplicaHeader))
	}
	assert.False(t, gone.Up(), "the refusing replica left the rotation")

	// The health check brings node2 back once it is ready.
	a.mu.Lock()
	a.down = false
	a.mu.Unlock()
	var back []string
	f.gw.CheckReplicas(context.Background(), time.Second, func(r *Replica, up bool) {
		if up {
			back = append(back, r.Name)
		}
	})
	assert.Equal(t, []string{"node2"}, back)
	assert.Equal(t, []string{"node1", "node2", "node3"}, names(f.gw.Replicas()))
}

func names(rs []*Replica) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Name)
	}
	return out
}
