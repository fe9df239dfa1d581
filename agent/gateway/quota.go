package gateway

import (
	"math"
	"sync"
	"time"
)

// A key's limits are token buckets: one of requests and one of tokens, each holding a minute's
// allowance and refilled continuously. A request takes one request and reserves its max_tokens;
// when it ends, the tokens the engine reports are charged instead of the reservation, so the
// token bucket may run into debt, which later requests wait out.

// bucket is one token bucket.
type bucket struct {
	capacity, perSecond, level float64
	last                       time.Time
}

func newBucket(perMinute int, now time.Time) *bucket {
	return &bucket{capacity: float64(perMinute), perSecond: float64(perMinute) / 60, level: float64(perMinute), last: now}
}

func (b *bucket) refill(now time.Time) {
	if d := now.Sub(b.last).Seconds(); d > 0 {
		b.level = math.Min(b.capacity, b.level+d*b.perSecond)
	}
	b.last = now
}

// wait is how long until the bucket holds n.
func (b *bucket) wait(n float64) time.Duration {
	if b.level >= n {
		return 0
	}
	return time.Duration((n - b.level) / b.perSecond * float64(time.Second))
}

// quota is one key's state.
type quota struct {
	mu       sync.Mutex
	limits   [3]int // the key's requests and tokens per minute and in-flight bound it was made for
	requests *bucket
	tokens   *bucket
	inFlight int
}

// The limits a request can run into, as the metrics and the audit log name them.
const (
	limitRequests = "requests_per_minute"
	limitTokens   = "tokens_per_minute"
	limitInFlight = "max_in_flight"
)

// quotas holds every limited key's quota, by name; a key whose limits change gets a new one.
type quotas struct {
	mu sync.Mutex
	m  map[string]*quota
}

// of returns key's quota, or nil when the key has no limits.
func (q *quotas) of(k Key, now time.Time) *quota {
	limits := [3]int{k.RequestsPerMinute, k.TokensPerMinute, k.MaxInFlight}
	if limits == [3]int{} {
		return nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if cur, ok := q.m[k.Name]; ok && cur.limits == limits {
		return cur
	}
	n := &quota{limits: limits}
	if k.RequestsPerMinute > 0 {
		n.requests = newBucket(k.RequestsPerMinute, now)
	}
	if k.TokensPerMinute > 0 {
		n.tokens = newBucket(k.TokensPerMinute, now)
	}
	if q.m == nil {
		q.m = map[string]*quota{}
	}
	if old, ok := q.m[k.Name]; ok { // the keys file changed: requests in flight still count
		old.mu.Lock()
		n.inFlight = old.inFlight
		old.mu.Unlock()
	}
	q.m[k.Name] = n
	return n
}

// admit takes one request and reserves up to reserve tokens (what it returns), or names the
// limit that holds the request back and when to retry.
func (q *quota) admit(reserve int, now time.Time) (reserved int, limit string, retry time.Duration) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.limits[2] > 0 && q.inFlight >= q.limits[2] {
		return 0, limitInFlight, time.Second
	}
	if q.requests != nil {
		q.requests.refill(now)
		if w := q.requests.wait(1); w > 0 {
			return 0, limitRequests, w
		}
	}
	if q.tokens != nil {
		q.tokens.refill(now)
		reserve = min(reserve, int(q.tokens.capacity)) // a request larger than a minute's allowance waits for a full bucket
		if w := q.tokens.wait(math.Max(float64(reserve), 1)); w > 0 {
			return 0, limitTokens, w
		}
		q.tokens.level -= float64(reserve)
	} else {
		reserve = 0
	}
	if q.requests != nil {
		q.requests.level--
	}
	q.inFlight++
	return reserve, "", 0
}

// done ends a request: the tokens it used are charged in place of what it reserved.
func (q *quota) done(reserved, used int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.inFlight--
	if q.tokens != nil {
		q.tokens.level = math.Min(q.tokens.capacity, q.tokens.level+float64(reserved-used))
	}
}
