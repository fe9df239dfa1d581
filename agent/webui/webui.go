// Package webui is the endpoint's web page under /ui/ on the gateway's port: sign-in with an
// API key, the job's status, the key's usage and a chat. The page is plain HTML, CSS and one
// script, embedded in the binary, and works under any path prefix (Open OnDemand's
// /rnode/HOST/PORT/): every URL in it is relative.
//
// What keeps it safe: the key is sent once, in a POST body, and stays on the server; the
// browser holds a random session in an HttpOnly, SameSite=Strict cookie scoped to the page's
// API; every call that changes something needs the session's CSRF token in a header, which
// another origin cannot send without a preflight this page never grants; the
// Content-Security-Policy allows no inline script and no framing but by the configured origins;
// and the script writes every text with textContent, never as HTML.
package webui

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/llm-agent/llm-agent/agent/gateway"
)

//go:embed static
var static embed.FS

// Prefix is where the page is served on the gateway's port.
const Prefix = "/ui/"

// Options configure the page.
type Options struct {
	// Gateway answers the chat and the model list, with the signed-in key, as it answers any
	// client: its limits, audit log and metrics apply.
	Gateway http.Handler
	// Keys are the keys one may sign in with; a key taken out of them ends its sessions.
	Keys *gateway.Keys
	// Status tells the job's state; Usage shares its cost out to keys.
	Status func(r *http.Request) (Status, error)
	Usage  func() (gateway.UsageReport, error)
	// Owner tells whether a key is the job's owner's, who sees every key's usage.
	Owner func(gateway.Key) bool
	// FrameAncestors are the origins that may frame the page (an Open OnDemand host).
	FrameAncestors []string
	// SessionTTL is how long a session lasts without use; 12 hours when zero.
	SessionTTL time.Duration
	Logger     hclog.Logger
}

// Page serves /ui/.
type Page struct {
	opts     Options
	sessions *sessions
	csp      string
}

// New returns the page.
func New(o Options) *Page {
	if o.SessionTTL <= 0 {
		o.SessionTTL = 12 * time.Hour
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	if o.Owner == nil {
		o.Owner = func(gateway.Key) bool { return false }
	}
	ancestors := "'none'"
	if len(o.FrameAncestors) > 0 {
		ancestors = strings.Join(o.FrameAncestors, " ")
	}
	return &Page{opts: o, sessions: newSessions(o.SessionTTL, maxSessions),
		csp: "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
			"base-uri 'none'; form-action 'none'; frame-ancestors " + ancestors}
}

// Mount returns a handler that serves the page under Prefix and everything else with next.
func (p *Page) Mount(next http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", next)
	mux.HandleFunc("/ui", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Location", "ui/") // relative, so that it works under any prefix
		w.WriteHeader(http.StatusMovedPermanently)
	})
	mux.Handle(Prefix, p.Handler())
	return mux
}

// Handler serves the page's files and its API, with the security headers on every answer.
func (p *Page) Handler() http.Handler {
	files, _ := fs.Sub(static, "static")
	mux := http.NewServeMux()
	mux.Handle("GET /ui/", http.StripPrefix("/ui/", noListing(http.FileServerFS(files))))
	mux.HandleFunc("GET /ui/api/session", p.session)
	mux.HandleFunc("POST /ui/api/session", p.signIn)
	mux.HandleFunc("DELETE /ui/api/session", p.signOut)
	mux.HandleFunc("GET /ui/api/status", p.signedIn(p.status))
	mux.HandleFunc("GET /ui/api/usage", p.signedIn(p.usage))
	mux.HandleFunc("GET /ui/api/models", p.signedIn(p.models))
	mux.HandleFunc("POST /ui/api/chat", p.signedIn(p.chat))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", p.csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cross-Origin-Resource-Policy", "same-origin")
		h.Set("Cache-Control", "no-store")
		if len(p.opts.FrameAncestors) == 0 {
			h.Set("X-Frame-Options", "DENY") // for browsers that predate frame-ancestors
		}
		if keyInURL(r) {
			apiError(w, http.StatusBadRequest, "an API key never goes in a URL: sign in on the page; this key may now be in logs and history, so have it replaced")
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// noListing answers 404 for a directory other than the page's root, instead of listing it.
func noListing(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "" && strings.HasSuffix(r.URL.Path, "/") {
			http.NotFound(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// keyInURL tells a URL that carries what looks like a key: a query parameter named like one, or
// any value shaped like this project's keys.
func keyInURL(r *http.Request) bool {
	for name, vals := range r.URL.Query() {
		switch strings.ToLower(name) {
		case "key", "api_key", "apikey", "token", "access_token":
			return true
		}
		for _, v := range vals {
			if strings.HasPrefix(v, "sk-") {
				return true
			}
		}
	}
	return strings.Contains(r.URL.Path, "sk-")
}
