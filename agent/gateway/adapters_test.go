package gateway

import (
	"io"
	"net/http"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const ownerKey = "sk-owner-0123456789abcdef0"

// loraEngine answers vLLM's runtime LoRA routes and records what reached it.
type loraEngine struct {
	mu   sync.Mutex
	seen []string
}

func (e *loraEngine) handler(t *testing.T) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		e.mu.Lock()
		e.seen = append(e.seen, r.Header.Get("Authorization")+" "+r.URL.Path+" "+string(body))
		e.mu.Unlock()
		if string(body) == `{"lora_name":"missing"}` {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"error":{"message":"The lora adapter 'missing' cannot be found.","type":"NotFoundError","code":404}}`))
			return
		}
		w.Write([]byte("Success"))
	}
}

func (e *loraEngine) requests() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.seen...)
}

type change struct{ name, path string }

func loraFixture(t *testing.T, lora bool, owner string) (*fixture, *loraEngine, *[]change) {
	eng := &loraEngine{}
	var mu sync.Mutex
	changes := &[]change{}
	f := newFixture(t, eng.handler(t), false, func(o *Options) {
		o.LoRA, o.OwnerKey = lora, owner
		o.OnAdapter = func(name, path string) {
			mu.Lock()
			defer mu.Unlock()
			*changes = append(*changes, change{name, path})
		}
	})
	return f, eng, changes
}

func TestAdapterRoutesAreTheOwners(t *testing.T) {
	f, eng, changes := loraFixture(t, true, ownerKey)
	load := `{"lora_name":"sql","lora_path":"/a/sql"}`

	// A client key: the routes do not exist, byte for byte as the engine answers a route it
	// does not have; nothing reaches the engine.
	for _, path := range []string{loadAdapterPath, unloadAdapterPath} {
		resp, body := f.do(t, "POST", path, aliceKey, load)
		assert.Equal(t, http.StatusNotFound, resp.StatusCode)
		assert.Equal(t, notFound, body)
		resp, _ = f.do(t, "GET", path, bobKey, "")
		assert.Equal(t, http.StatusNotFound, resp.StatusCode, "any method")
	}
	resp, body := f.do(t, "POST", loadAdapterPath, "", load)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, body)
	resp, _ = f.do(t, "POST", loadAdapterPath, engineKey, load)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "the engine's internal key is no key here")
	assert.Empty(t, eng.requests())
	assert.Empty(t, *changes)

	// The owner's key opens them, and only them.
	resp, body = f.do(t, "POST", loadAdapterPath, ownerKey, load)
	assert.Equal(t, http.StatusOK, resp.StatusCode, body)
	resp, body = f.do(t, "POST", unloadAdapterPath, ownerKey, `{"lora_name":"sql"}`)
	assert.Equal(t, http.StatusOK, resp.StatusCode, body)
	resp, body = f.do(t, "POST", unloadAdapterPath, ownerKey, `{"lora_name":"missing"}`)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	assert.Contains(t, body, "cannot be found", "the engine's refusal reaches the owner")
	assert.Equal(t, []string{
		"Bearer " + engineKey + " " + loadAdapterPath + " " + load,
		"Bearer " + engineKey + " " + unloadAdapterPath + ` {"lora_name":"sql"}`,
		"Bearer " + engineKey + " " + unloadAdapterPath + ` {"lora_name":"missing"}`,
	}, eng.requests(), "the engine gets its own key, never the owner's")
	assert.Equal(t, []change{{"sql", "/a/sql"}, {"sql", ""}}, *changes, "the agent hears of what the engine did, not of refusals")
	resp, _ = f.do(t, "POST", "/v1/chat/completions", ownerKey, `{"model":"m"}`)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "the owner's key is not a client key")

	var owner []Record
	for _, r := range f.records(t) {
		if r.Key == OwnerKeyName {
			owner = append(owner, r)
		}
	}
	require.Len(t, owner, 3, "the owner's calls are audited")
	assert.Equal(t, "sql", owner[0].Model)
	assert.Equal(t, loadAdapterPath, owner[0].Endpoint)
	assert.Equal(t, http.StatusNotFound, owner[2].Status)
	assert.NotContains(t, f.log.String(), ownerKey)
}

func TestAdapterRouteRefusals(t *testing.T) {
	f, eng, _ := loraFixture(t, true, ownerKey)
	for _, tt := range []struct {
		name, method, path, body string
		status                   int
	}{
		{"GET", "GET", loadAdapterPath, "", http.StatusMethodNotAllowed},
		{"not JSON", "POST", loadAdapterPath, `nope`, http.StatusBadRequest},
		{"no name", "POST", loadAdapterPath, `{"lora_path":"/a"}`, http.StatusBadRequest},
		{"load without a path", "POST", loadAdapterPath, `{"lora_name":"a"}`, http.StatusBadRequest},
	} {
		resp, body := f.do(t, tt.method, tt.path, ownerKey, tt.body)
		assert.Equal(t, tt.status, resp.StatusCode, "%s: %s", tt.name, body)
	}
	f.ready.Store(false)
	resp, _ := f.do(t, "POST", loadAdapterPath, ownerKey, `{"lora_name":"a","lora_path":"/a"}`)
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.Empty(t, eng.requests())

	off, _, _ := loraFixture(t, false, ownerKey)
	resp, body := off.do(t, "POST", loadAdapterPath, ownerKey, `{"lora_name":"a","lora_path":"/a"}`)
	assert.Equal(t, http.StatusConflict, resp.StatusCode)
	assert.Contains(t, body, "--lora")

	closed, _, _ := loraFixture(t, true, "")
	resp, _ = closed.do(t, "POST", loadAdapterPath, "", `{}`)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "no owner key: the empty key opens nothing")
}

func TestOwnerKeyNameIsKept(t *testing.T) {
	_, err := NewKeySet([]Key{{Name: OwnerKeyName, Key: aliceKey}})
	assert.ErrorIs(t, err, ErrKeys)
}
