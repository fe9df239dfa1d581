package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
)

// The gateway looks at a few top-level fields of a JSON request and may set two of them. It
// does so by scanning the body's bytes, never by decoding the whole body: a request costs the
// gateway the body it forwards and the small fields it reads, not a decoded copy of a prompt.
// Keys are matched exactly, as the engine's JSON parser (Python's) matches them, and where a key
// repeats, the last one counts, as there.

// span is where one top-level member's value lies in the body.
type span struct{ start, end int }

// maxInspected bounds a field the gateway decodes; a longer one is not read.
const maxInspected = 4 << 10

// topLevel returns the value spans of the wanted top-level keys of a JSON object, or ok false
// when body is not one valid JSON object.
func topLevel(body []byte, wanted ...string) (map[string]span, bool) {
	if !json.Valid(body) {
		return nil, false
	}
	i := skipSpace(body, 0)
	if i >= len(body) || body[i] != '{' {
		return nil, false
	}
	found := map[string]span{}
	for i = skipSpace(body, i+1); i < len(body) && body[i] == '"'; {
		keyEnd := skipString(body, i)
		key := decodeKey(body[i:keyEnd])
		i = skipSpace(body, keyEnd) + 1 // past ':'
		start := skipSpace(body, i)
		end := skipValue(body, start)
		for _, w := range wanted {
			if key == w {
				found[w] = span{start, end}
			}
		}
		i = skipSpace(body, end)
		if i < len(body) && body[i] == ',' {
			i = skipSpace(body, i+1)
		}
	}
	return found, true
}

// decodeKey returns a member name, or "" for one too long to be a name the gateway wants.
func decodeKey(raw []byte) string {
	if len(raw) > 64 {
		return ""
	}
	return jsonString(raw)
}

// jsonString returns the string a valid JSON value holds, or "" for another kind of value.
func jsonString(raw []byte) string {
	if len(raw) < 2 || raw[0] != '"' {
		return ""
	}
	plain := true // nothing escaped and all ASCII: the bytes are the string
	for _, c := range raw {
		if c == '\\' || c >= 0x80 {
			plain = false
			break
		}
	}
	if plain {
		return string(raw[1 : len(raw)-1])
	}
	var s string
	json.Unmarshal(raw, &s)
	return s
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index just past the string that starts at b[i] == '"'.
func skipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return len(b)
}

// skipValue returns the index just past the (valid) JSON value that starts at b[i].
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return i
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = skipString(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
		return len(b)
	default: // a number, true, false or null
		for i < len(b) && !bytes.ContainsRune([]byte(" \t\r\n,}]"), rune(b[i])) {
			i++
		}
		return i
	}
}

// requestFields are what the gateway reads of a request.
type requestFields struct {
	model                string
	stream, includeUsage bool
	hasPriority          bool
	priority             *float64                   // the client's priority, when a number
	maxTokens            int                        // max_tokens or max_completion_tokens; 0 when absent
	streamOptions        map[string]json.RawMessage // nil when absent or unreadable
	spans                map[string]span
}

// inspect reads the fields the gateway needs; ok is false for a body that is not a JSON object,
// which the engine answers itself.
func inspect(body []byte) (requestFields, bool) {
	spans, ok := topLevel(body, "model", "stream", "stream_options", "priority", "max_tokens", "max_completion_tokens")
	if !ok {
		return requestFields{}, false
	}
	f := requestFields{spans: spans}
	value := func(k string) []byte { s := spans[k]; return body[s.start:s.end] }
	if s, ok := spans["model"]; ok && s.end-s.start <= maxInspected {
		f.model = jsonString(value("model"))
	} else if ok {
		f.model = "(too long)"
	}
	if s, ok := spans["priority"]; ok {
		f.hasPriority = true
		var p float64
		if s.end-s.start <= 32 && json.Unmarshal(value("priority"), &p) == nil {
			f.priority = &p
		}
	}
	for _, k := range []string{"max_tokens", "max_completion_tokens"} {
		if s, ok := spans[k]; ok && s.end-s.start <= 20 {
			// The value is valid JSON, so Atoi reads what a JSON decoder into an int would
			// (a fraction or an exponent fails both).
			if n, err := strconv.Atoi(string(value(k))); err == nil && n > f.maxTokens {
				f.maxTokens = n
			}
		}
	}
	f.stream = bytes.Equal(value("stream"), []byte("true"))
	if s, ok := spans["stream_options"]; ok && s.end-s.start <= maxInspected {
		if json.Unmarshal(value("stream_options"), &f.streamOptions) == nil && f.streamOptions != nil {
			f.includeUsage = bytes.Equal(bytes.TrimSpace(f.streamOptions["include_usage"]), []byte("true"))
		}
	}
	return f, true
}

// setMember returns body with the top-level member key set to value: the value of its last
// occurrence replaced, or the member added first in the object.
func setMember(body []byte, spans map[string]span, key string, value []byte) []byte {
	if s, ok := spans[key]; ok {
		out := make([]byte, 0, len(body)-(s.end-s.start)+len(value))
		out = append(append(append(out, body[:s.start]...), value...), body[s.end:]...)
		shift := len(value) - (s.end - s.start)
		for k, o := range spans {
			if o.start > s.start {
				spans[k] = span{o.start + shift, o.end + shift}
			}
		}
		spans[key] = span{s.start, s.start + len(value)}
		return out
	}
	open := bytes.IndexByte(body, '{') + 1
	member := append(append([]byte(strconv.Quote(key)), ':'), value...)
	if rest := skipSpace(body, open); rest < len(body) && body[rest] != '}' {
		member = append(member, ',')
	}
	out := make([]byte, 0, len(body)+len(member))
	out = append(append(append(out, body[:open]...), member...), body[open:]...)
	for k, o := range spans {
		spans[k] = span{o.start + len(member), o.end + len(member)}
	}
	spans[key] = span{open + len(strconv.Quote(key)) + 1, open + len(strconv.Quote(key)) + 1 + len(value)}
	return out
}

// requestBody reads the body within the size limit and, for JSON, notes the model and stream
// flag, asks a stream for its usage, and adds the key's priority. injected is true when the
// usage chunk was asked for by the gateway and must not reach the client.
func (g *Gateway) requestBody(w http.ResponseWriter, r *http.Request, x *exchange) ([]byte, bool, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, g.opts.MaxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			x.status = http.StatusRequestEntityTooLarge
			writeError(w, x.status, "invalid_request_error", "request_too_large",
				fmt.Sprintf("request body larger than %d bytes", g.opts.MaxBody))
		} else {
			x.status = http.StatusBadRequest
			writeError(w, x.status, "invalid_request_error", "bad_request", "cannot read the request body")
		}
		return nil, false, err
	}
	if r.Method != http.MethodPost {
		return body, false, nil
	}
	f, ok := inspect(body)
	if !ok {
		return body, false, nil // the engine answers what is not a JSON object itself
	}
	x.model, x.stream, x.maxTokens = auditField(f.model, maxModelField), f.stream, f.maxTokens
	injected := f.stream && !f.includeUsage
	if injected {
		so := f.streamOptions
		if so == nil {
			so = map[string]json.RawMessage{}
		}
		so["include_usage"] = json.RawMessage("true")
		b, _ := json.Marshal(so)
		body = setMember(body, f.spans, "stream_options", b)
	}
	if g.opts.Priority {
		// The key's priority (vLLM's default, 0, for a key without one) is the most a client
		// may claim: lower runs first, so a client may lower its own requests, never raise them.
		floor := 0
		if x.key.Priority != nil {
			floor = *x.key.Priority
		}
		if (!f.hasPriority && floor != 0) || (f.priority != nil && *f.priority < float64(floor)) {
			body = setMember(body, f.spans, "priority", []byte(strconv.Itoa(floor)))
		}
	}
	return body, injected, nil
}
