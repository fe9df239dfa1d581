package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseLoRAArgs(t *testing.T) {
	o, err := parseArgs([]string{"serve", "/m", "--enable-lora", "--max-lora-rank", "64", "--lora-modules", "a=/p/a",
		`{"name":"b","path":"/p/with,comma","base_model_name":"m"}`, "--max-model-len", "512"})
	require.NoError(t, err)
	assert.True(t, o.enableLoRA)
	assert.Equal(t, 64, o.maxLoRARank)
	assert.Equal(t, []loraModule{{Name: "a", Path: "/p/a"}, {Name: "b", Path: "/p/with,comma", Base: "m"}}, o.loraModules)
	assert.Equal(t, 512, o.maxModelLen, "the values of --lora-modules end at the next option")
	o, err = parseArgs([]string{"serve", "/m", "--lora-modules=a=/p/a", "--lora-modules", "c=/p/c"})
	require.NoError(t, err)
	assert.Equal(t, []loraModule{{Name: "c", Path: "/p/c"}}, o.loraModules, "the last use wins, as argparse stores it")
	for _, tt := range []struct{ args, err string }{
		{"serve /m --max-lora-rank 12", "invalid choice: '12'"},
		{"serve /m --lora-modules", "expected at least one argument"},
		{"serve /m --lora-modules {bad", "Invalid JSON format"},
		{`serve /m --lora-modules {"name":"a"}`, "Invalid fields"},
		{`serve /m --lora-modules {"name":"a","path":"/p","x":1}`, "Invalid JSON format"},
	} {
		_, err := parseArgs(strings.Fields(tt.args))
		assert.ErrorContains(t, err, tt.err, tt.args)
	}
}

func TestLoRAAdapters(t *testing.T) {
	t.Setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
	adapter := func(r string) string {
		dir := t.TempDir()
		require.NoError(t, os.WriteFile(filepath.Join(dir, "adapter_config.json"), []byte(`{"r":`+r+`}`), 0o644))
		return dir
	}
	o, err := parseArgs([]string{"serve", "/models/tiny", "--served-model-name", "tiny", "--enable-lora", "--lora-modules", "sql=/a/sql"})
	require.NoError(t, err)
	srv := httptest.NewServer(newServer(o, []string{"k"}, time.Millisecond).routes())
	defer srv.Close()
	models := func() []string {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v1/models", nil)
		req.Header.Set("Authorization", "Bearer k")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		var doc struct {
			Data []struct {
				ID     string  `json:"id"`
				Parent *string `json:"parent"`
			} `json:"data"`
		}
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&doc))
		var ids []string
		for _, m := range doc.Data {
			if m.Parent != nil {
				ids = append(ids, m.ID+"<"+*m.Parent)
			} else {
				ids = append(ids, m.ID)
			}
		}
		return ids
	}
	status := func(resp *http.Response) int {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	assert.Equal(t, []string{"tiny", "sql<tiny"}, models())
	assert.Equal(t, 200, status(post(t, srv.URL+"/v1/completions", "k", `{"model":"sql","prompt":"x","max_tokens":1}`)))
	assert.Equal(t, 404, status(post(t, srv.URL+"/v1/completions", "k", `{"model":"chat","prompt":"x","max_tokens":1}`)))

	load := func(name, path string) int {
		return status(post(t, srv.URL+"/v1/load_lora_adapter", "k", `{"lora_name":"`+name+`","lora_path":"`+path+`"}`))
	}
	assert.Equal(t, 200, load("chat", adapter("8")))
	assert.Equal(t, 400, load("chat", adapter("8")), "already loaded")
	assert.Equal(t, 400, load("big", adapter("32")), "above --max-lora-rank (16 by default)")
	assert.Equal(t, 400, load("none", t.TempDir()), "no adapter there")
	assert.Equal(t, 400, load("", "/p"))
	assert.Equal(t, 401, status(post(t, srv.URL+"/v1/load_lora_adapter", "", `{}`)))
	assert.Equal(t, []string{"tiny", "chat<tiny", "sql<tiny"}, models())
	assert.Equal(t, 200, status(post(t, srv.URL+"/v1/completions", "k", `{"model":"chat","prompt":"x","max_tokens":1}`)))
	assert.Equal(t, 200, status(post(t, srv.URL+"/v1/unload_lora_adapter", "k", `{"lora_name":"chat"}`)))
	assert.Equal(t, 404, status(post(t, srv.URL+"/v1/unload_lora_adapter", "k", `{"lora_name":"chat"}`)))
	assert.Equal(t, []string{"tiny", "sql<tiny"}, models())

	o.enableLoRA = false
	off := httptest.NewServer(newServer(o, nil, time.Millisecond).routes())
	defer off.Close()
	assert.Equal(t, 400, status(post(t, off.URL+"/v1/load_lora_adapter", "", `{"lora_name":"a","lora_path":"/p"}`)), "LoRA is off")
	t.Setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "")
	closed := httptest.NewServer(newServer(o, nil, time.Millisecond).routes())
	defer closed.Close()
	assert.Equal(t, 404, status(post(t, closed.URL+"/v1/load_lora_adapter", "", `{}`)), "no runtime routes without the variable")
}
