package gateway

import "sync/atomic"

// admit counts a request of key in, unless the key or the gateway is at its bound.
func (g *Gateway) admit(key string) bool {
	if n := g.admitted.Add(1); g.opts.MaxInFlight > 0 && n > int64(g.opts.MaxInFlight) {
		g.admitted.Add(-1)
		return false
	}
	if g.opts.MaxInFlightPerKey > 0 {
		n, _ := g.perKey.LoadOrStore(key, new(atomic.Int64))
		if n.(*atomic.Int64).Add(1) > int64(g.opts.MaxInFlightPerKey) {
			n.(*atomic.Int64).Add(-1)
			g.admitted.Add(-1)
			return false
		}
	}
	return true
}

// release counts a request of key out.
func (g *Gateway) release(key string) {
	g.admitted.Add(-1)
	if g.opts.MaxInFlightPerKey > 0 {
		n, _ := g.perKey.Load(key)
		n.(*atomic.Int64).Add(-1)
	}
}
