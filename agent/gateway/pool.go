package gateway

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llm-agent/llm-agent/vllm"
	"github.com/prometheus/client_golang/prometheus"
)

// UnavailableHeader marks a 503 that the gateway itself answered: the request never reached an
// engine, so a gateway in front of this one may send it to another replica.
const UnavailableHeader = "X-Llm-Agent-Unavailable"

// ReplicaHeader names the replica that answered a request.
const ReplicaHeader = "X-Llm-Agent-Replica"

// Replica is one engine the gateway routes to: the local engine behind its socket, or another
// node's engine behind that node's gateway.
type Replica struct {
	// Name is the replica's node.
	Name string
	// Endpoint is where the engine, or the node's gateway, listens; Key is what it requires.
	Endpoint vllm.Endpoint
	Key      string
	// local marks the engine on this node, whose progress the hang detection follows.
	local bool
	// ready tells the local engine's readiness; remote replicas have up instead.
	ready func() (bool, string)

	client   *http.Client
	url      string
	up       atomic.Bool
	inFlight atomic.Int64
	routed   atomic.Int64
}

// NewReplica returns a remote replica, out of rotation until SetUp(true).
func NewReplica(name string, ep vllm.Endpoint, key string) *Replica {
	return &Replica{Name: name, Endpoint: ep, Key: key, client: &http.Client{Transport: ep.Transport(256)}, url: ep.BaseURL()}
}

// Up tells whether the replica is in the rotation.
func (r *Replica) Up() bool {
	if r.ready != nil {
		ok, _ := r.ready()
		return ok
	}
	return r.up.Load()
}

// SetUp puts a remote replica in the rotation or takes it out.
func (r *Replica) SetUp(up bool) { r.up.Store(up) }

// InFlight is how many requests the replica has now; Routed how many it has had.
func (r *Replica) InFlight() int64 { return r.inFlight.Load() }

// Routed is how many requests were sent to the replica.
func (r *Replica) Routed() int64 { return r.routed.Load() }

// pool is the gateway's replicas: the local engine first, then the others as they join.
type pool struct {
	// replicas is read on every request without a lock; SetReplicas swaps it whole, under mu.
	replicas atomic.Pointer[[]*Replica]
	mu       sync.Mutex
	next     atomic.Uint64 // breaks ties between equally loaded replicas in turn
	// roundRobin takes the replicas in turn, whatever their load: only the benchmark that
	// measures least-in-flight against it sets it.
	roundRobin bool
}

func (p *pool) list() []*Replica { return *p.replicas.Load() }

// pick returns the ready replica with the fewest requests in flight that tried does not hold,
// or nil.
func (p *pool) pick(tried []*Replica) *Replica {
	rs := p.list()
	n := len(rs)
	if n == 1 { // one engine: nothing to choose
		if rs[0].Up() && !contains(tried, rs[0]) {
			return rs[0]
		}
		return nil
	}
	start := int(p.next.Add(1) % uint64(n))
	var best *Replica
	var bestLoad int64
	for i := range n {
		r := rs[(start+i)%n]
		if !r.Up() || contains(tried, r) {
			continue
		}
		if p.roundRobin {
			return r
		}
		if load := r.inFlight.Load(); best == nil || load < bestLoad {
			best, bestLoad = r, load
		}
	}
	return best
}

func contains(rs []*Replica, r *Replica) bool {
	for _, x := range rs {
		if x == r {
			return true
		}
	}
	return false
}

// anyUp tells whether some replica serves.
func (p *pool) anyUp() bool {
	for _, r := range p.list() {
		if r.Up() {
			return true
		}
	}
	return false
}

// SetReplicas sets the other nodes' replicas; those already known keep their state and counts.
func (g *Gateway) SetReplicas(others []*Replica) {
	g.pool.mu.Lock()
	defer g.pool.mu.Unlock()
	known := map[string]*Replica{}
	current := g.pool.list()
	for _, r := range current {
		known[r.Name+" "+r.url] = r
	}
	out := []*Replica{current[0]}
	for _, r := range others {
		if k, ok := known[r.Name+" "+r.url]; ok && !k.local {
			r = k
		}
		out = append(out, r)
	}
	g.pool.replicas.Store(&out)
}

// Replicas returns the replicas, the local engine first.
func (g *Gateway) Replicas() []*Replica {
	rs := append([]*Replica(nil), g.pool.list()...)
	sort.SliceStable(rs[min(1, len(rs)):], func(i, j int) bool { return rs[1+i].Name < rs[1+j].Name })
	return rs
}

// notSent tells an error of a request that never reached the replica: the connection was
// refused or could not be made, so another replica may take it.
func notSent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// CheckReplicas asks every other node's replica for its /readyz, at once: one that does not
// answer ready within timeout leaves the rotation, and one that does comes back. onChange
// hears of each change, one at a time.
func (g *Gateway) CheckReplicas(ctx context.Context, timeout time.Duration, onChange func(*Replica, bool)) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var changed []*Replica
	for _, r := range g.pool.list() {
		if r.local {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			up := probeReady(ctx, r, timeout)
			if r.up.Swap(up) != up && ctx.Err() == nil {
				mu.Lock()
				changed = append(changed, r)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if onChange == nil {
		return
	}
	// One at a time, in the pool's order, after every answer is in.
	for _, r := range g.pool.list() {
		if contains(changed, r) {
			onChange(r, r.Up())
		}
	}
}

func probeReady(ctx context.Context, r *Replica, timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.url+"/readyz", nil)
	if err != nil {
		return false
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// ReplicaCollector exports each replica's state: in the rotation or not, requests in flight,
// and requests routed to it.
type ReplicaCollector struct {
	g                    atomic.Pointer[Gateway]
	up, inFlight, routed *prometheus.Desc
}

var _ prometheus.Collector = (*ReplicaCollector)(nil)

// NewReplicaCollector returns the replica series, labelled with node and job, of the gateway
// Bind gives it; none before.
func NewReplicaCollector(node, job string) *ReplicaCollector {
	consts := prometheus.Labels{"node": node, "job": job}
	desc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, []string{"replica"}, consts)
	}
	return &ReplicaCollector{
		up:       desc("llm_agent_gateway_replica_up", "1 while the replica (an engine, named by its node) is in the gateway's rotation."),
		inFlight: desc("llm_agent_gateway_replica_in_flight", "Requests the gateway has in flight on the replica."),
		routed:   desc("llm_agent_gateway_replica_requests_total", "Requests the gateway sent to the replica."),
	}
}

// Bind makes the collector export g's replicas.
func (c *ReplicaCollector) Bind(g *Gateway) { c.g.Store(g) }

// Describe sends the series' descriptions.
func (c *ReplicaCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.up
	ch <- c.inFlight
	ch <- c.routed
}

// Collect sends the series.
func (c *ReplicaCollector) Collect(ch chan<- prometheus.Metric) {
	g := c.g.Load()
	if g == nil {
		return
	}
	for _, r := range g.Replicas() {
		up := 0.0
		if r.Up() {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up, r.Name)
		ch <- prometheus.MustNewConstMetric(c.inFlight, prometheus.GaugeValue, float64(r.InFlight()), r.Name)
		ch <- prometheus.MustNewConstMetric(c.routed, prometheus.CounterValue, float64(r.Routed()), r.Name)
	}
}
