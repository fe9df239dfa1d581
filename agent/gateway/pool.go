package gateway

import (
	"context"
	"errors"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llm-agent/llm-agent/vllm"
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
	// Model is the served name of the replica's model, by which requests are routed when the
	// replicas serve several; LoRA tells that it serves adapters, whose names route to it.
	Model string
	LoRA  bool
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
	// replicas is read on every request without a lock; SetReplicas swaps it whole, under mu,
	// and routes with it.
	replicas atomic.Pointer[[]*Replica]
	routes   atomic.Pointer[routes]
	mu       sync.Mutex
	next     atomic.Uint64 // breaks ties between equally loaded replicas in turn
	// roundRobin takes the replicas in turn, whatever their load: only the benchmark that
	// measures least-in-flight against it sets it.
	roundRobin bool
}

func (p *pool) list() []*Replica { return *p.replicas.Load() }

// routes are the models the replicas serve, when they serve more than one.
type routes struct {
	// models are the served names, the local replica's first; lora is the model that serves
	// adapters, when some replica does (loraOn).
	models []string
	lora   string
	loraOn bool
}

// set keeps the replicas, and the models they serve.
func (p *pool) set(rs []*Replica) {
	rt := &routes{}
	for _, r := range rs {
		if r.Model != "" && !slices.Contains(rt.models, r.Model) {
			rt.models = append(rt.models, r.Model)
		}
		if r.LoRA && !rt.loraOn {
			rt.lora, rt.loraOn = r.Model, true
		}
	}
	p.replicas.Store(&rs)
	p.routes.Store(rt)
}

// route returns the model a request for name goes to: "" (any replica) when the replicas serve
// one model, the local replica's for a request that names none, an adapter's base model for a
// name no model has, and false when no model serves it.
func (p *pool) route(name string) (string, bool) {
	rt := p.routes.Load()
	switch {
	case len(rt.models) < 2:
		return "", true
	case name == "":
		return rt.models[0], true
	case slices.Contains(rt.models, name):
		return name, true
	case rt.loraOn:
		return rt.lora, true
	}
	return "", false
}

// pick returns the ready replica of model ("": any) with the fewest requests in flight that
// tried does not hold, or nil.
func (p *pool) pick(tried []*Replica, model string) *Replica {
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
		if !r.Up() || contains(tried, r) || (model != "" && r.Model != model) {
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
	g.pool.set(out)
}

// Replicas returns the replicas, the local engine first.
func (g *Gateway) Replicas() []*Replica {
	rs := append([]*Replica(nil), g.pool.list()...)
	sort.SliceStable(rs[min(1, len(rs)):], func(i, j int) bool { return rs[1+i].Name < rs[1+j].Name })
	return rs
}

// forward sends the request to the least loaded ready replica and passes its answer on. A
// request that never reached a replica (its node's gateway refused the connection, or answered
// that its engine is not ready) goes to the next one, and that replica leaves the rotation
// until its /readyz says ready again.
func (g *Gateway) forward(w http.ResponseWriter, r *http.Request, x *exchange, body []byte, injected bool, model string) {
	var buf [4]*Replica // the replicas tried, without an allocation for a few
	tried := buf[:0]
	for {
		rep := g.pool.pick(tried, model)
		if rep == nil {
			g.unavailable(w, r, x, "no replica of the model is ready; retry shortly")
			return
		}
		tried = append(tried, rep)
		req, err := g.engineRequest(r, body, rep)
		if err != nil {
			x.status = http.StatusBadRequest
			writeError(w, x.status, "invalid_request_error", "bad_request", "bad request: "+err.Error())
			return
		}
		if !g.send(w, r, x, req, rep, injected) {
			rep.SetUp(false)
			continue
		}
		return
	}
}

// send sends req to rep and passes the answer on; it returns false, having answered nothing,
// when the request did not reach rep's engine and may go to another replica.
func (g *Gateway) send(w http.ResponseWriter, r *http.Request, x *exchange, req *http.Request, rep *Replica, injected bool) bool {
	rep.routed.Add(1)
	rep.inFlight.Add(1)
	defer rep.inFlight.Add(-1)
	if rep.local {
		// The hang detection follows the local engine only.
		g.progress.begin()
		defer g.progress.end()
	}
	// The transport itself, not the client: a proxy passes the engine's answer on as it is, a
	// redirect too, and skips the client's redirect bookkeeping on every request.
	resp, err := rep.client.Transport.RoundTrip(req)
	if err != nil {
		switch {
		case r.Context().Err() != nil:
			x.status, x.err = 499, "client closed the request"
		case !rep.local && notSent(err):
			return false
		default:
			g.unavailable(w, r, x, "the engine is not answering (restarting?); retry shortly")
		}
		return true
	}
	defer resp.Body.Close()
	if !rep.local && resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get(UnavailableHeader) != "" {
		return false
	}
	if rep.local {
		g.progress.saw() // the engine answered
		resp.Body = progressReader{resp.Body, &g.progress}
	}
	if len(g.pool.list()) > 1 {
		w.Header().Set(ReplicaHeader, rep.Name)
	}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		g.streamResponse(w, r, resp, x, injected)
		return true
	}
	g.plainResponse(w, resp, x)
	return true
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
