package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/vllm"
)

// modelEngine answers as an engine serving model (and adapters) would: its list on /v1/models,
// its name and the asked model elsewhere.
func modelEngine(node, model string, adapters ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path == "/readyz" {
			w.Write([]byte("ready\n"))
			return
		}
		if r.URL.Path == "/v1/models" {
			data := []map[string]any{{"id": model, "object": "model"}}
			for _, ad := range adapters {
				data = append(data, map[string]any{"id": ad, "object": "model", "parent": model})
			}
			json.NewEncoder(w).Encode(map[string]any{"object": "list", "data": data})
			return
		}
		var req struct {
			Model string `json:"model"`
		}
		json.NewDecoder(r.Body).Decode(&req)
		if req.Model != "" && req.Model != model && !slices.Contains(adapters, req.Model) {
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprintf(w, `{"error":{"message":"The model %s does not exist.","type":"NotFoundError","param":"model","code":404}}`, "`"+req.Model+"`")
			return
		}
		fmt.Fprintf(w, `{"served_by":%q,"model":%q}`, node, req.Model)
	}
}

// twoModels is a gateway whose local engine serves "alpha" and whose other replica, on node2,
// serves "beta" with the adapter "beta-sql".
func twoModels(t *testing.T, keys string) *fixture {
	f := newFixture(t, modelEngine("node1", "alpha"), false, func(o *Options) { o.Name, o.Model = "node1", "alpha" })
	if keys != "" {
		writeKeys(t, f.keysFile, keys)
		require.NoError(t, f.keys.Reload())
	}
	srv := httptest.NewServer(modelEngine("node2", "beta", "beta-sql"))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	port, _ := strconv.Atoi(u.Port())
	rep := NewReplica("node2", vllm.Endpoint{Host: u.Hostname(), Port: port}, "replica-key")
	rep.Model, rep.LoRA = "beta", true
	f.gw.SetReplicas([]*Replica{rep})
	f.gw.CheckReplicas(context.Background(), time.Second, nil)
	require.True(t, rep.Up())
	return f
}

func TestRoutesByModel(t *testing.T) {
	f := twoModels(t, "")
	for _, c := range []struct{ model, node string }{
		{"alpha", "node1"}, {"beta", "node2"}, {"beta-sql", "node2"}, {"", "node1"},
	} {
		body := `{"prompt":"x"}`
		if c.model != "" {
			body = `{"model":"` + c.model + `","prompt":"x"}`
		}
		resp, b := f.do(t, "POST", "/v1/completions", aliceKey, body)
		require.Equal(t, http.StatusOK, resp.StatusCode, b)
		assert.Contains(t, b, `"served_by":"`+c.node+`"`, "model %q", c.model)
		assert.Equal(t, c.node, resp.Header.Get(ReplicaHeader))
	}

	// A name no model serves: 404 as the engine answers; that of the model that serves
	// adapters, which may have been added at run time.
	resp, b := f.do(t, "POST", "/v1/completions", aliceKey, `{"model":"gamma","prompt":"x"}`)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	assert.Contains(t, b, "The model `gamma` does not exist.")

	// One list of every model and adapter.
	resp, b = f.do(t, "GET", "/v1/models", aliceKey, "")
	require.Equal(t, http.StatusOK, resp.StatusCode, b)
	assert.Equal(t, []string{"alpha", "beta", "beta-sql"}, modelIDs(t, b))
	resp, _ = f.do(t, "GET", "/v1/models/beta", aliceKey, "")
	assert.Equal(t, http.StatusOK, resp.StatusCode)

	// With the replica of beta out, beta's requests are 503 and alpha's still served.
	f.gw.Replicas()[1].SetUp(false)
	resp, _ = f.do(t, "POST", "/v1/completions", aliceKey, `{"model":"beta","prompt":"x"}`)
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	resp, _ = f.do(t, "POST", "/v1/completions", aliceKey, `{"model":"alpha","prompt":"x"}`)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	resp, b = f.do(t, "GET", "/v1/models", aliceKey, "")
	assert.Equal(t, []string{"alpha"}, modelIDs(t, b), "a model with no replica ready is left out")
}

func TestModelAccessAcrossModels(t *testing.T) {
	f := twoModels(t, "keys:\n  - {name: alice, project: p, key: "+aliceKey+", models: [alpha]}\n  - {name: bob, project: p, sha256: "+HashKey(bobKey)+"}\n")
	resp, b := f.do(t, "POST", "/v1/completions", aliceKey, `{"model":"beta","prompt":"x"}`)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	_, gamma := f.do(t, "POST", "/v1/completions", aliceKey, `{"model":"gamma","prompt":"x"}`)
	assert.Equal(t, strings.ReplaceAll(gamma, "gamma", "beta"), b, "the same answer as for a model nobody serves")
	resp, b = f.do(t, "GET", "/v1/models", aliceKey, "")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, []string{"alpha"}, modelIDs(t, b))
	resp, _ = f.do(t, "GET", "/v1/models/beta", aliceKey, "")
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	resp, b = f.do(t, "GET", "/v1/models", bobKey, "")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, []string{"alpha", "beta", "beta-sql"}, modelIDs(t, b))
}

func TestListModelsNoneReady(t *testing.T) {
	f := twoModels(t, "")
	f.ready.Store(false)
	f.gw.Replicas()[1].SetUp(false)
	resp, _ := f.do(t, "GET", "/v1/models", aliceKey, "")
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
}

func modelIDs(t *testing.T, body string) []string {
	t.Helper()
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &list), body)
	var ids []string
	for _, m := range list.Data {
		ids = append(ids, m.ID)
	}
	return ids
}

// TestPriorityReachesOtherReplicas: the key's priority is added before the request is routed,
// so another node's engine schedules it by priority as the local one would; a client cannot
// claim a better priority than its key's.
func TestPriorityReachesOtherReplicas(t *testing.T) {
	f := newFixture(t, localEngine("node1"), true, func(o *Options) { o.Name = "node1" })
	bodies := make(chan string, 4)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" {
			return
		}
		b, _ := io.ReadAll(r.Body)
		bodies <- string(b)
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"served_by":"node2"}`))
	}))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	port, _ := strconv.Atoi(u.Port())
	f.gw.SetReplicas([]*Replica{NewReplica("node2", vllm.Endpoint{Host: u.Hostname(), Port: port}, "replica-key")})
	f.gw.CheckReplicas(context.Background(), time.Second, nil)
	f.ready.Store(false) // the local engine is out: node2 takes the requests
	resp, b := f.do(t, "POST", "/v1/completions", aliceKey, `{"model":"m","prompt":"x"}`)
	require.Equal(t, http.StatusOK, resp.StatusCode, b)
	assert.Equal(t, "node2", resp.Header.Get(ReplicaHeader))
	assert.JSONEq(t, `{"model":"m","prompt":"x","priority":3}`, <-bodies, "alice's priority reaches node2's engine")
	for _, c := range []struct{ key, asked, sent string }{
		{aliceKey, `5`, `5`},           // lower than the key's: kept
		{aliceKey, `-1`, `3`},          // better than the key's: the key's
		{aliceKey, `-1.0`, `3`},        // the same, as a float
		{aliceKey, `"high"`, `"high"`}, // not a number: the engine refuses it
		{bobKey, `-5`, `0`},            // a key without a priority claims at most vLLM's default
		{bobKey, `2`, `2`},
	} {
		resp, _ = f.do(t, "POST", "/v1/completions", c.key, `{"model":"m","prompt":"x","priority":`+c.asked+`}`)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		assert.JSONEq(t, `{"model":"m","prompt":"x","priority":`+c.sent+`}`, <-bodies, "asked %s", c.asked)
	}
	resp, _ = f.do(t, "POST", "/v1/completions", bobKey, `{"model":"m","prompt":"x"}`)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.JSONEq(t, `{"model":"m","prompt":"x"}`, <-bodies, "nothing to add for a key without a priority")
}
