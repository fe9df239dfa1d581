package gateway

// A service's handover: the predecessor's gateway turns its clients over to the successor.

import (
	"net/http"
	"strings"
)

// Headers of a service's handover: the successor's base URL on the predecessor's 503s; a
// client that sends FollowHeader "redirect" gets a 307 to the successor instead.
const (
	SuccessorHeader = "X-Llm-Agent-Successor"
	FollowHeader    = "X-Llm-Agent-Follow"
)

// handoverRetryAfter is what the predecessor's 503s tell clients to wait: the successor
// serves already.
const handoverRetryAfter = "1"

// CloseConnections ends every connection after its next answer, so that a client's next
// request opens a new one: where a follower of the service's file sends it to the successor.
func (g *Gateway) CloseConnections() { g.closing.Store(true) }

// HandOver stops taking new requests: from now on they get 503 with Retry-After: 1 and the
// successor's base URL in SuccessorHeader, or, when they ask for it, a redirect there. The
// requests in flight go on.
func (g *Gateway) HandOver(successorBaseURL string) {
	g.closing.Store(true)
	g.successor.Store(&successorBaseURL)
}

// handedOver answers a request once the job has handed over: a redirect to the successor for
// a client that asks for one, else 503 with the successor's address. It tells whether it did.
func (g *Gateway) handedOver(w http.ResponseWriter, r *http.Request, x *exchange) bool {
	next := g.successor.Load()
	if next == nil {
		return false
	}
	if r.Header.Get(FollowHeader) == "redirect" {
		x.status = http.StatusTemporaryRedirect
		http.Redirect(w, r, strings.TrimSuffix(*next, "/v1")+r.URL.RequestURI(), x.status)
		return true
	}
	x.status = http.StatusServiceUnavailable
	w.Header().Set(UnavailableHeader, "1")
	w.Header().Set(SuccessorHeader, *next)
	w.Header().Set("Retry-After", handoverRetryAfter)
	writeError(w, x.status, "service_unavailable", "handed_over",
		"this job has handed the service over to its successor at "+*next+"; retry there")
	return true
}
