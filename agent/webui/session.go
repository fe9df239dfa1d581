package webui

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/llm-agent/llm-agent/agent/gateway"
)

const (
	// cookieName holds the session; its path is the page's API directory, the browser's
	// default for a cookie set by POST api/session, so it works under any prefix.
	cookieName = "llm_agent_ui"
	// csrfHeader carries the session's CSRF token on every call that changes something.
	csrfHeader = "X-CSRF-Token"
	// maxSessions bounds the sessions kept; past it the least recently used one ends.
	maxSessions = 4096
	// maxSignInBody bounds a sign-in request.
	maxSignInBody = 4 << 10
)

// session is one signed-in browser: the key stays here, never in the browser.
type session struct {
	secret, csrf string
	used         time.Time
}

type sessions struct {
	mu   sync.Mutex
	ttl  time.Duration
	max  int
	byID map[string]*session
}

func newSessions(ttl time.Duration, max int) *sessions {
	return &sessions{ttl: ttl, max: max, byID: map[string]*session{}}
}

func token() string {
	b := make([]byte, 32)
	rand.Read(b) // never fails (crypto/rand since Go 1.24)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (s *sessions) add(secret string, now time.Time) (id string, ss *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.byID) >= s.max {
		var oldest string
		for id, ss := range s.byID {
			if oldest == "" || ss.used.Before(s.byID[oldest].used) {
				oldest = id
			}
		}
		delete(s.byID, oldest)
	}
	id, ss = token(), &session{secret: secret, csrf: token(), used: now}
	s.byID[id] = ss
	return id, ss
}

func (s *sessions) get(id string, now time.Time) (session, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ss, ok := s.byID[id]
	if !ok {
		return session{}, false
	}
	if now.Sub(ss.used) > s.ttl {
		delete(s.byID, id)
		return session{}, false
	}
	ss.used = now
	return *ss, true
}

func (s *sessions) remove(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.byID, id)
}

// signedInAs is what the page learns of its session.
type signedInAs struct {
	Key     string `json:"key"`
	Project string `json:"project,omitempty"`
	Owner   bool   `json:"owner"`
	CSRF    string `json:"csrf"`
}

// lookup finds the request's session and its key, which must still be one of the job's.
func (p *Page) lookup(r *http.Request) (string, session, gateway.Key, bool) {
	c, err := r.Cookie(cookieName)
	if err != nil {
		return "", session{}, gateway.Key{}, false
	}
	ss, ok := p.sessions.get(c.Value, time.Now())
	if !ok {
		return "", session{}, gateway.Key{}, false
	}
	k, ok := p.opts.Keys.Current().Lookup(ss.secret)
	if !ok {
		p.sessions.remove(c.Value) // the key was taken out of the keys file
		return "", session{}, gateway.Key{}, false
	}
	return c.Value, ss, k, true
}

// session tells the page who is signed in, with the CSRF token it needs after a reload. Another
// origin cannot read the answer.
func (p *Page) session(w http.ResponseWriter, r *http.Request) {
	_, ss, k, ok := p.lookup(r)
	if !ok {
		apiError(w, http.StatusUnauthorized, "not signed in")
		return
	}
	writeJSON(w, signedInAs{Key: k.Name, Project: k.Project, Owner: p.opts.Owner(k), CSRF: ss.csrf})
}

// signIn takes a key from a JSON body, sent by the page's script from its own origin.
func (p *Page) signIn(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) || r.Header.Get("Content-Type") != "application/json" {
		apiError(w, http.StatusForbidden, "sign in from the page itself")
		return
	}
	var body struct {
		Key string `json:"key"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, maxSignInBody)).Decode(&body); err != nil || body.Key == "" {
		apiError(w, http.StatusBadRequest, "give the API key")
		return
	}
	k, ok := p.opts.Keys.Current().Lookup(body.Key)
	if !ok {
		p.opts.Logger.Info("web page sign-in refused", "remote", r.RemoteAddr)
		apiError(w, http.StatusUnauthorized, "that key is not one of this job's keys")
		return
	}
	id, ss := p.sessions.add(body.Key, time.Now())
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: id, HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https", MaxAge: int(p.opts.SessionTTL.Seconds())})
	p.opts.Logger.Info("web page sign-in", "key", k.Name, "remote", r.RemoteAddr)
	writeJSON(w, signedInAs{Key: k.Name, Project: k.Project, Owner: p.opts.Owner(k), CSRF: ss.csrf})
}

func (p *Page) signOut(w http.ResponseWriter, r *http.Request) {
	id, ss, _, ok := p.lookup(r)
	if !ok || !p.csrfOK(r, ss) {
		apiError(w, http.StatusForbidden, "not signed in from this page")
		return
	}
	p.sessions.remove(id)
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	w.WriteHeader(http.StatusNoContent)
}

// signedIn runs h for a signed-in session; a call that changes something (a POST) also needs
// the session's CSRF token and the page's own origin.
func (p *Page) signedIn(h func(http.ResponseWriter, *http.Request, gateway.Key, string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, ss, k, ok := p.lookup(r)
		if !ok {
			apiError(w, http.StatusUnauthorized, "not signed in")
			return
		}
		if r.Method != http.MethodGet && !p.csrfOK(r, ss) {
			apiError(w, http.StatusForbidden, "this call must come from the page itself")
			return
		}
		h(w, r, k, ss.secret)
	}
}

func (p *Page) csrfOK(r *http.Request, ss session) bool {
	got := r.Header.Get(csrfHeader)
	return sameOrigin(r) && got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(ss.csrf)) == 1
}

// sameOrigin refuses a request a browser marks as sent from another site, or whose Origin is
// not the host it was sent to. A request without either (curl) passes: it carries no cookie
// of a victim's browser.
func sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return false
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil {
		return false
	}
	host := r.Host
	if fwd := r.Header.Get("X-Forwarded-Host"); fwd != "" {
		host = fwd // behind a proxy (Open OnDemand's), the page's origin is the proxy's
	}
	return u.Host == host
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func apiError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}
