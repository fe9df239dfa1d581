package gateway

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// listModels answers GET /v1/models for replicas that serve several models: one ready replica
// of each model gives its list (the model and its adapters), and the client gets them all in
// one, in the order of the models, less those its key may not use. A model with no ready
// replica is left out until one is; with none ready at all the answer is 503.
func (g *Gateway) listModels(w http.ResponseWriter, r *http.Request, x *exchange) {
	data := []json.RawMessage{}
	answered := 0
	for _, model := range g.pool.routes.Load().models {
		rep := g.pool.pick(nil, model)
		if rep == nil {
			continue
		}
		entries, ok := g.modelsOf(r, rep)
		if !ok {
			continue
		}
		answered++
		data = append(data, entries...)
	}
	if answered == 0 {
		g.unavailable(w, r, x, "no replica of any model is ready; retry shortly")
		return
	}
	b, _ := json.Marshal(map[string]any{"object": "list", "data": data})
	if x.key.Restricted() {
		b = filterModels(b, x.key)
	}
	x.status = http.StatusOK
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(x.status)
	w.Write(b)
}

// modelsOf asks one replica for its /v1/models list.
func (g *Gateway) modelsOf(r *http.Request, rep *Replica) ([]json.RawMessage, bool) {
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, rep.url+"/v1/models", nil)
	if err != nil {
		return nil, false
	}
	req.Header.Set("Authorization", "Bearer "+rep.Key)
	rep.inFlight.Add(1)
	defer rep.inFlight.Add(-1)
	resp, err := rep.client.Do(req)
	if err != nil {
		return nil, false
	}
	defer resp.Body.Close()
	var list struct {
		Data []json.RawMessage `json:"data"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(http.MaxBytesReader(nil, resp.Body, maxResponse)).Decode(&list) != nil {
		return nil, false
	}
	return list.Data, true
}
