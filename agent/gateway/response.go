package gateway

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// maxResponse bounds a non-streamed response the gateway reads to count its tokens.
const maxResponse = 64 << 20

// usageOf reads the token counts of a response or chunk body, if it has them. The engine puts
// "usage" last, so the gateway looks at that one object rather than the whole body, which may
// hold a long completion. A streamed chunk says "usage":null until the last: that costs a
// search and a byte. A count that is not a whole number makes no usage at all.
func usageOf(b []byte) (prompt, completion int, ok bool) {
	i := bytes.LastIndex(b, usageKey)
	if i <= 0 || b[i-1] == '\\' {
		return 0, 0, false
	}
	v := skipSpace(b, i+len(usageKey))
	if v >= len(b) || b[v] != '{' {
		return 0, 0, false // null
	}
	u := b[v:skipValue(b, v)]
	spans, ok := topLevel(u, "prompt_tokens", "completion_tokens")
	if !ok {
		return 0, 0, false
	}
	count := func(k string) (int, bool) {
		s, found := spans[k]
		if !found {
			return 0, true // absent counts as none, as a JSON decoder leaves it
		}
		n, err := strconv.Atoi(string(u[s.start:s.end]))
		return n, err == nil
	}
	prompt, okP := count("prompt_tokens")
	completion, okC := count("completion_tokens")
	if !okP || !okC {
		return 0, 0, false
	}
	return prompt, completion, true
}

var usageKey = []byte(`"usage":`)

// copyHeaders passes the engine's response headers on, except those the gateway sets.
func copyHeaders(dst, src http.Header) {
	for k, vs := range src {
		switch k {
		case "Content-Length", "Connection", "Transfer-Encoding", "Keep-Alive":
			continue
		}
		dst[k] = vs
	}
}

// plainResponse reads the whole (bounded) response, so that an engine dying mid-body becomes a
// clean 502 instead of a cut connection, then counts its tokens and passes it on.
func (g *Gateway) plainResponse(w http.ResponseWriter, resp *http.Response, x *exchange) {
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		x.status = http.StatusBadGateway
		writeError(w, x.status, "server_error", "engine_failed", "the engine stopped while answering; retry")
		return
	}
	x.status = resp.StatusCode
	x.prompt, x.complete, _ = usageOf(b)
	if x.key.Restricted() {
		switch {
		case resp.StatusCode == http.StatusNotFound && x.endpoint != "/v1/models":
			g.modelNotFound(w, x) // the engine's own answer lists the models it serves
			return
		case x.endpoint == "/v1/models" && resp.StatusCode == http.StatusOK:
			b = filterModels(b, x.key)
		}
	}
	copyHeaders(w.Header(), resp.Header)
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(resp.StatusCode)
	w.Write(b)
}

// streamResponse passes server-sent events on one at a time, flushing each, and takes the
// usage from the final chunk. If the engine dies mid-stream the client gets an error event and
// [DONE] rather than a cut connection.
func (g *Gateway) streamResponse(w http.ResponseWriter, r *http.Request, resp *http.Response, x *exchange, injected bool) {
	copyHeaders(w.Header(), resp.Header)
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(resp.StatusCode)
	x.status = resp.StatusCode
	flusher, _ := w.(http.Flusher)
	rd := streamReaders.Get().(*bufio.Reader)
	rd.Reset(resp.Body)
	defer func() {
		rd.Reset(nil)
		streamReaders.Put(rd)
	}()
	var event bytes.Buffer
	done, partial, pending := false, false, false
	for {
		// Events passed on leave before a read that could wait for the engine: one whose line
		// is not all at hand. So an event never waits for the next, and events that came
		// together leave in one write.
		if pending && flusher != nil {
			if b, _ := rd.Peek(rd.Buffered()); bytes.IndexByte(b, '\n') < 0 {
				flusher.Flush()
				pending = false
			}
		}
		// The line as read into the reader's buffer, not a copy; a line longer than the buffer
		// comes in parts, and only a whole line can be the blank one that ends an event.
		line, err := rd.ReadSlice('\n')
		whole := !partial
		if partial = err == bufio.ErrBufferFull; partial {
			err = nil
		}
		if len(line) > 0 {
			event.Write(line)
			if whole && !partial && len(bytes.TrimRight(line, "\r\n")) == 0 { // a blank line ends an event
				if g.forwardEvent(w, event.Bytes(), x, injected) {
					done = true
				}
				event.Reset()
				pending = true
			}
		}
		if err != nil {
			if event.Len() > 0 {
				w.Write(event.Bytes())
			}
			if !done && err != io.EOF && r.Context().Err() == nil {
				x.status, x.err = http.StatusBadGateway, "engine stopped mid-stream"
				fmt.Fprint(w, `data: {"error":{"message":"the engine stopped in the middle of the response; retry","type":"server_error","param":null,"code":"engine_failed"}}`+"\n\ndata: [DONE]\n\n")
				if flusher != nil {
					flusher.Flush()
				}
			} else if r.Context().Err() != nil {
				x.status, x.err = 499, "client closed the stream"
			}
			return
		}
	}
}

// streamReaders are the streams' read buffers, reused: a stream starts without allocating one.
var streamReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 64<<10) }}

// forwardEvent writes one event to the client unless it is the usage chunk the gateway asked
// for on its own; it reports whether the event was the final [DONE].
func (g *Gateway) forwardEvent(w io.Writer, ev []byte, x *exchange, injected bool) bool {
	var data []byte
	for line := range bytes.Lines(ev) {
		if d, ok := bytes.CutPrefix(bytes.TrimRight(line, "\r\n"), []byte("data:")); ok {
			data = bytes.TrimSpace(d)
		}
	}
	if bytes.Equal(data, []byte("[DONE]")) {
		w.Write(ev)
		return true
	}
	if x.ttft == 0 && len(data) > 0 {
		x.ttft = time.Since(x.start)
	}
	if p, c, ok := usageOf(data); ok {
		x.prompt, x.complete = p, c
		var chunk struct {
			Choices []json.RawMessage `json:"choices"`
		}
		if injected && json.Unmarshal(data, &chunk) == nil && len(chunk.Choices) == 0 {
			return false // the client did not ask for usage
		}
	}
	w.Write(ev)
	return false
}

// filterModels keeps, of a /v1/models list, the models and adapters the key may use; an answer
// it cannot read becomes an empty list rather than pass unfiltered.
func filterModels(b []byte, k Key) []byte {
	var list map[string]json.RawMessage
	var data []json.RawMessage
	if json.Unmarshal(b, &list) != nil || json.Unmarshal(list["data"], &data) != nil {
		out, _ := json.Marshal(map[string]any{"object": "list", "data": []any{}})
		return out
	}
	kept := []json.RawMessage{}
	for _, m := range data {
		var entry map[string]json.RawMessage
		var id, parent string
		if json.Unmarshal(m, &entry) != nil || json.Unmarshal(entry["id"], &id) != nil || !k.Allows(id) {
			continue
		}
		// An adapter names its base model as its parent: not to a key that may not use it.
		if json.Unmarshal(entry["parent"], &parent) == nil && parent != "" && !k.Allows(parent) {
			entry["parent"] = json.RawMessage("null")
			m, _ = json.Marshal(entry)
		}
		kept = append(kept, m)
	}
	list["data"], _ = json.Marshal(kept)
	out, _ := json.Marshal(list)
	return out
}
