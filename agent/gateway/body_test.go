package gateway

import (
	"encoding/json"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestInspect(t *testing.T) {
	tests := []struct {
		name, body, model   string
		stream, usage, prio bool
	}{
		{"plain", `{"model":"tiny","prompt":"x"}`, "tiny", false, false, false},
		{"stream", ` { "prompt" : "a \"quoted\" }{ text", "stream" : true , "model":"m"} `, "m", true, false, false},
		{"usage asked", `{"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":false}}`, "", true, true, false},
		{"the last of a repeated key counts", `{"stream":true,"stream":false,"model":"a","model":"b"}`, "b", false, false, false},
		{"keys match exactly, as in Python", `{"Stream":true,"MODEL":"x"}`, "", false, false, false},
		{"escaped key", `{"str\u0065am":true}`, "", true, false, false},
		{"nested fields are not top-level", `{"messages":[{"model":"inner","stream":true}],"priority":2}`, "", false, false, true},
		{"stream not a literal true", `{"stream":"true"}`, "", false, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, ok := inspect([]byte(tt.body))
			require.True(t, ok)
			assert.Equal(t, tt.model, f.model)
			assert.Equal(t, tt.stream, f.stream)
			assert.Equal(t, tt.usage, f.includeUsage)
			assert.Equal(t, tt.prio, f.hasPriority)
		})
	}
	for _, bad := range []string{``, `[1,2]`, `{"a":`, `"s"`, `{"a":1}x`} {
		_, ok := inspect([]byte(bad))
		assert.False(t, ok, bad)
	}
}

// decodeObject is the reference: what a JSON parser that keeps the last of a repeated key sees.
func decodeObject(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m), "%s", b)
	return m
}

func TestSetMember(t *testing.T) {
	body := []byte(`{"model":"m", "stream":true, "stream_options":{"continuous_usage_stats":true}, "prompt":"p"}`)
	f, ok := inspect(body)
	require.True(t, ok)
	body = setMember(body, f.spans, "stream_options", []byte(`{"continuous_usage_stats":true,"include_usage":true}`))
	body = setMember(body, f.spans, "priority", []byte(`3`))
	m := decodeObject(t, body)
	assert.Equal(t, map[string]any{"continuous_usage_stats": true, "include_usage": true}, m["stream_options"])
	assert.Equal(t, 3.0, m["priority"])
	assert.Equal(t, "p", m["prompt"])
	assert.Equal(t, "m", m["model"])

	for _, empty := range []string{`{}`, ` { } `} {
		b := []byte(empty)
		f, ok := inspect(b)
		require.True(t, ok)
		b = setMember(b, f.spans, "priority", []byte(`1`))
		assert.Equal(t, map[string]any{"priority": 1.0}, decodeObject(t, b))
	}
	// A repeated key: the last one, which the engine reads, is the one replaced.
	b := []byte(`{"stream_options":{"include_usage":true},"stream_options":{"include_usage":false},"stream":true}`)
	f, ok = inspect(b)
	require.True(t, ok)
	assert.False(t, f.includeUsage)
	b = setMember(b, f.spans, "stream_options", []byte(`{"include_usage":true}`))
	assert.Contains(t, string(b), `"stream_options":{"include_usage":true},"stream_options":{"include_usage":true}`)
}

// TestInspectMemory: reading and rewriting a 16 MiB request costs the gateway one copy of the
// body at most, not a decoded map of it.
func TestInspectMemory(t *testing.T) {
	prompt := strings.Repeat("lorem ipsum \\\"dolor\\\" sit amet, ", 16<<20/32)
	body := []byte(`{"model":"tiny","prompt":"` + prompt + `","stream":true,"max_tokens":4}`)
	measure := func(fn func()) uint64 {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		fn()
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	var f requestFields
	read := measure(func() { f, _ = inspect(body) })
	assert.Less(t, read, uint64(64<<10), "inspecting allocates little (%d bytes for a %d-byte body)", read, len(body))
	var out []byte
	rewrite := measure(func() { out = setMember(body, f.spans, "stream_options", []byte(`{"include_usage":true}`)) })
	assert.Less(t, rewrite, uint64(len(body))*5/4, "one copy of the body (%d bytes for %d)", rewrite, len(body))
	assert.True(t, json.Valid(out))
}

// TestInspectReadsAsADecoder: the fields the gateway reads without a decoder are what
// encoding/json reads of them.
func TestInspectReadsAsADecoder(t *testing.T) {
	for _, body := range []string{
		`{"model":"tiny","max_tokens":16}`,
		`{"model":"t\u0069ny","max_tokens":-3}`,
		`{"model":"caf\u00e9 \"x\"","max_completion_tokens":0}`,
		"{\"model\":\"café\xff\",\"max_tokens\":1e3}",
		`{"model":7,"max_tokens":2.5}`,
		`{"model":null,"max_tokens":"16"}`,
		`{"model":"","max_tokens":99999999999999999999}`,
	} {
		f, ok := inspect([]byte(body))
		require.True(t, ok, body)
		var ref struct {
			Model     any `json:"model"`
			MaxTokens any `json:"max_tokens"`
		}
		var model string
		var maxTokens int
		json.Unmarshal([]byte(body), &ref)
		if s, isString := ref.Model.(string); isString {
			model = s
		}
		var m struct {
			N  int `json:"max_tokens"`
			N2 int `json:"max_completion_tokens"`
		}
		if json.Unmarshal([]byte(body), &m) == nil {
			maxTokens = max(m.N, m.N2)
		}
		assert.Equal(t, model, f.model, body)
		assert.Equal(t, maxTokens, f.maxTokens, body)
	}
}

func TestUsageOf(t *testing.T) {
	for _, tt := range []struct {
		body         string
		prompt, comp int
		ok           bool
	}{
		{`{"choices":[],"usage":{"prompt_tokens":7,"total_tokens":10,"completion_tokens":3}}`, 7, 3, true},
		{`{"choices":[],"usage" : {"completion_tokens":3}}`, 0, 0, false}, // not the engine's spelling: no space before ':'
		{`{"choices":[],"usage":{"completion_tokens":3}}`, 0, 3, true},
		{`{"choices":[{"text":"x"}],"usage":null}`, 0, 0, false},
		{`{"text":"say \"usage\":{\"prompt_tokens\":1}"}`, 0, 0, false},
		{`{"usage":{"prompt_tokens":1.5,"completion_tokens":2}}`, 0, 0, false},
		{`{"usage":{"prompt_tokens":1,`, 0, 0, false},
		{`{"usage":{}}`, 0, 0, true},
	} {
		p, c, ok := usageOf([]byte(tt.body))
		assert.Equal(t, []any{tt.prompt, tt.comp, tt.ok}, []any{p, c, ok}, tt.body)
	}
}
