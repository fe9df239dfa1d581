package lora

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/jobfiles"
)

const ownerKey = "sk-owner-test-0123456789"

// gateway stands in for the job's gateway: it checks the owner's key and records the calls.
type gateway struct {
	mu    sync.Mutex
	calls []string
	// answer is the status and body for the next calls; 200 when zero.
	status int
	body   string
}

func (g *gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	g.mu.Lock()
	g.calls = append(g.calls, r.Header.Get("Authorization")+" "+r.URL.Path+" "+string(b))
	status, body := g.status, g.body
	g.mu.Unlock()
	if status != 0 {
		w.WriteHeader(status)
	}
	io.WriteString(w, body)
}

// job writes a state directory whose connection names srv and the owner's key.
func testJob(t *testing.T, srv string, edit func(c *jobfiles.Connection)) string {
	t.Helper()
	dir := t.TempDir()
	keyFile := filepath.Join(dir, jobfiles.OwnerKeyFile)
	require.NoError(t, os.WriteFile(keyFile, []byte(ownerKey+"\n"), 0o600))
	c := jobfiles.Connection{JobID: "42", State: jobfiles.StateReady, BaseURL: srv + "/v1", ServedModelName: "tiny",
		LoRAMaxRank: 16, OwnerKeyFile: keyFile, Adapters: []jobfiles.Adapter{{Name: "sql", Path: "/a/sql"}}}
	if edit != nil {
		edit(&c)
	}
	require.NoError(t, jobfiles.WriteJSONAtomic(filepath.Join(dir, jobfiles.ConnectionFile), c, 0o600))
	return dir
}

func adapter(t *testing.T, r string) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "adapter_config.json"), []byte(`{"r":`+r+`}`), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "adapter_model.safetensors"), []byte("x"), 0o644))
	return dir
}

func TestAddAndRemove(t *testing.T) {
	g := &gateway{}
	srv := httptest.NewServer(g)
	defer srv.Close()
	dir := testJob(t, srv.URL, nil)
	path := adapter(t, "8")
	var out bytes.Buffer
	require.NoError(t, Add(context.Background(), Options{Job: dir, Name: "chat", Path: path, Out: &out}))
	assert.Contains(t, out.String(), "job 42 serves adapter chat (rank 8, from "+path+")")
	out.Reset()
	require.NoError(t, Remove(context.Background(), Options{Job: dir, Name: "sql", Out: &out}))
	assert.Contains(t, out.String(), "no longer serves adapter sql")
	assert.Equal(t, []string{
		"Bearer " + ownerKey + ` /v1/load_lora_adapter {"lora_name":"chat","lora_path":"` + path + `"}`,
		"Bearer " + ownerKey + ` /v1/unload_lora_adapter {"lora_name":"sql"}`,
	}, g.calls)
	assert.NotContains(t, out.String(), ownerKey)
}

func TestRefusals(t *testing.T) {
	g := &gateway{}
	srv := httptest.NewServer(g)
	defer srv.Close()
	ok := testJob(t, srv.URL, nil)
	rank8, rank32 := adapter(t, "8"), adapter(t, "32")
	open := testJob(t, srv.URL, nil)
	require.NoError(t, os.Chmod(filepath.Join(open, jobfiles.OwnerKeyFile), 0o644))
	for _, tt := range []struct {
		name  string
		run   func(context.Context, Options) error
		o     Options
		input bool
		want  string
	}{
		{"unknown job", Add, Options{Job: filepath.Join(t.TempDir(), "none"), Name: "a", Path: rank8}, true, "no connection file"},
		{"bad name", Add, Options{Job: ok, Name: "a b", Path: rank8}, true, "name"},
		{"the model's name", Add, Options{Job: ok, Name: "tiny", Path: rank8}, true, "already serves"},
		{"an adapter's name", Add, Options{Job: ok, Name: "sql", Path: rank8}, true, "already serves"},
		{"not an adapter", Add, Options{Job: ok, Name: "a", Path: t.TempDir()}, true, "adapter_config.json"},
		{"rank too large", Add, Options{Job: ok, Name: "a", Path: rank32}, true, "--max-lora-rank 32"},
		{"not served", Remove, Options{Job: ok, Name: "nope"}, true, "it serves: sql"},
		{"key file open to others", Add, Options{Job: open, Name: "a", Path: rank8}, true, "chmod 600"},
		{"ended", Add, Options{Job: testJob(t, srv.URL, func(c *jobfiles.Connection) { c.State = jobfiles.StateStopped }), Name: "a", Path: rank8}, false, "has ended"},
		{"no LoRA", Add, Options{Job: testJob(t, srv.URL, func(c *jobfiles.Connection) { c.LoRAMaxRank = 0 }), Name: "a", Path: rank8}, true, "--lora NAME=PATH"},
		{"no gateway", Remove, Options{Job: testJob(t, srv.URL, func(c *jobfiles.Connection) { c.OwnerKeyFile = "" }), Name: "sql"}, true, "--gateway=false"},
		{"none served", Remove, Options{Job: testJob(t, srv.URL, func(c *jobfiles.Connection) { c.Adapters = nil }), Name: "sql"}, true, "it serves: none"},
		{"gateway down", Add, Options{Job: testJob(t, "http://127.0.0.1:1", nil), Name: "a", Path: rank8}, false, "job 42"},
	} {
		tt.o.Out = io.Discard
		err := tt.run(context.Background(), tt.o)
		require.Error(t, err, tt.name)
		assert.Contains(t, err.Error(), tt.want, tt.name)
		assert.Equal(t, tt.input, errorIsInput(err), "%s: %v", tt.name, err)
	}
	assert.Empty(t, g.calls, "nothing was asked of the gateway")

	for _, tt := range []struct{ body, want string }{
		{`{"error":{"message":"LoRA rank 64 is greater than max_lora_rank 16"}}`, "HTTP 400): LoRA rank 64 is greater"},
		{`{"detail":"Not Found"}`, "HTTP 400): Not Found"},
		{`{"message":"bad"}`, "HTTP 400): bad"},
		{"plain text\n", "HTTP 400): plain text"},
	} {
		g.status, g.body = http.StatusBadRequest, tt.body
		err := Add(context.Background(), Options{Job: ok, Name: "a", Path: rank8, Out: io.Discard})
		assert.ErrorContains(t, err, tt.want)
		assert.False(t, errorIsInput(err), "the engine's refusal exits 1")
	}
}

func errorIsInput(err error) bool { return errors.Is(err, ErrInput) }
