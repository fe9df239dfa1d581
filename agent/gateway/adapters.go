package gateway

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// OwnerKeyName is the name the job's owner has in the audit log and metrics; no key of a keys
// file may take it.
const OwnerKeyName = "job-owner"

// vLLM's routes that load and unload LoRA adapters while the engine runs. Whoever can call
// them makes the engine read a directory of their choosing as the job's user, so the gateway
// keeps them to the job's owner: a client key gets the 404 of a route that does not exist.
const (
	loadAdapterPath   = "/v1/load_lora_adapter"
	unloadAdapterPath = "/v1/unload_lora_adapter"
)

// maxAdapterBody bounds an adapter request: a name and a path.
const maxAdapterBody = 64 << 10

// notFound is FastAPI's answer for a route it does not have, byte for byte, which is what the
// engine answers a client for a route it does not serve.
const notFound = `{"detail":"Not Found"}`

// adapterRequest is the body of vLLM's load and unload routes.
type adapterRequest struct {
	Name string `json:"lora_name"`
	Path string `json:"lora_path,omitempty"`
}

// adapter serves the adapter routes: to the owner's key it passes them to the engine, and it
// tells the agent what the engine now serves; to anyone else they do not exist.
func (g *Gateway) adapter(w http.ResponseWriter, r *http.Request) {
	x := &exchange{start: time.Now(), endpoint: endpoint(r.URL.Path)}
	defer g.record(x)
	token, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if g.opts.OwnerKey == "" || subtle.ConstantTimeCompare([]byte(token), []byte(g.opts.OwnerKey)) != 1 {
		if _, ok := g.authenticate(w, r, x); !ok {
			return // answered 401, as for any route
		}
		x.status, x.err = http.StatusNotFound, "adapter route: open to the job's owner only"
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(notFound)))
		w.WriteHeader(x.status)
		io.WriteString(w, notFound)
		return
	}
	x.key = Key{Name: OwnerKeyName}
	g.inflight.Add(1)
	g.active.Add(1)
	defer func() {
		g.active.Add(-1)
		g.inflight.Done()
	}()
	req, body, ok := g.adapterRequest(w, r, x)
	if !ok {
		return
	}
	x.model = auditField(req.Name, maxModelField)
	g.changeAdapter(w, r, x, req, body)
}

// adapterRequest reads and checks the owner's adapter request; ok is false once it has been
// answered.
func (g *Gateway) adapterRequest(w http.ResponseWriter, r *http.Request, x *exchange) (req adapterRequest, body []byte, ok bool) {
	if r.Method != http.MethodPost {
		x.status = http.StatusMethodNotAllowed
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, x.status, "invalid_request_error", "method_not_allowed", "use POST")
		return req, nil, false
	}
	if !g.pool.routes.Load().loraOn {
		x.status = http.StatusConflict
		writeError(w, x.status, "invalid_request_error", "lora_disabled",
			"this job's engine runs without LoRA: start the job with --lora NAME=PATH or --vllm-arg=--enable-lora")
		return req, nil, false
	}
	if ready, _ := g.ready(); !ready {
		g.unavailable(w, r, x, "the model is not ready; retry shortly")
		return req, nil, false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxAdapterBody))
	if err == nil {
		err = json.Unmarshal(body, &req)
	}
	if err == nil && req.Name == "" {
		err = fmt.Errorf("lora_name is empty")
	}
	if err == nil && r.URL.Path == loadAdapterPath && req.Path == "" {
		err = fmt.Errorf("lora_path is empty")
	}
	if err != nil {
		x.status = http.StatusBadRequest
		writeError(w, x.status, "invalid_request_error", "bad_request", "bad adapter request: "+err.Error())
		return req, nil, false
	}
	return req, body, true
}

// changeAdapter has every replica of the model that serves adapters load or unload the
// adapter (another node's through its gateway, which takes this gateway's key as its owner's);
// the first refusal is the answer. Once the engines took it, the agent is told.
func (g *Gateway) changeAdapter(w http.ResponseWriter, r *http.Request, x *exchange, req adapterRequest, body []byte) {
	var resp *http.Response
	for _, rep := range g.pool.list() {
		if !rep.Up() || !rep.LoRA {
			continue
		}
		ereq, err := g.engineRequest(r, body, rep)
		if err != nil {
			x.status = http.StatusBadRequest
			writeError(w, x.status, "invalid_request_error", "bad_request", "bad request: "+err.Error())
			return
		}
		rr, err := rep.client.Do(ereq)
		if err != nil {
			g.unavailable(w, r, x, "the engine is not answering (restarting?); retry shortly")
			return
		}
		defer rr.Body.Close()
		if resp == nil || (resp.StatusCode == http.StatusOK && rr.StatusCode != http.StatusOK) {
			resp = rr
		}
	}
	if resp == nil {
		g.unavailable(w, r, x, "the model is not ready; retry shortly")
		return
	}
	g.plainResponse(w, resp, x)
	if resp.StatusCode == http.StatusOK && g.opts.OnAdapter != nil {
		path := req.Path
		if r.URL.Path == unloadAdapterPath {
			path = ""
		}
		g.opts.OnAdapter(req.Name, path)
	}
}
