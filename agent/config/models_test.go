package config

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/vllm"
)

// testAdapter makes a LoRA adapter directory of rank r.
func testAdapter(t *testing.T, r int) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "adapter_config.json"), []byte(`{"peft_type":"LORA","r":`+strconv.Itoa(r)+`}`), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "adapter_model.safetensors"), []byte("x"), 0o644))
	return dir
}

func writeModelsFile(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "models.yaml")
	require.NoError(t, os.WriteFile(path, []byte(body), 0o600))
	return path
}

func TestModelEntriesRefusals(t *testing.T) {
	base := Default()
	for _, tt := range []struct {
		name string
		set  func(c *Config)
		want string
	}{
		{"file and --model", func(c *Config) {
			c.ModelsFile, c.Model = writeModelsFile(t, "models: [{model: /m/a}]\n"), "/m/b"
		}, "leave out --model"},
		{"several --model and --lora", func(c *Config) {
			c.Model, c.MoreModels, c.LoRA = "/m/a", []string{"/m/b"}, []string{"x=/l/x"}
		}, "write a models file"},
		{"--replicas", func(c *Config) { c.Model, c.MoreModels, c.Replicas = "/m/a", []string{"/m/b"}, 2 }, "rather than --replicas"},
		{"no gateway", func(c *Config) { c.Model, c.MoreModels, c.Gateway = "/m/a", []string{"/m/b"}, false }, "need the gateway"},
		{"same name", func(c *Config) { c.Model, c.MoreModels = "/m/a", []string{"/n/a"} }, `two models are served as "a"`},
		{"no model", func(c *Config) { c.ModelsFile = writeModelsFile(t, "models:\n  - {replicas: 1}\n") }, "entry 1 has no model"},
		{"unknown key", func(c *Config) { c.ModelsFile = writeModelsFile(t, "models:\n  - {model: /m/a, replica: 1}\n") }, "field replica not found"},
		{"empty", func(c *Config) { c.ModelsFile = writeModelsFile(t, "# nothing\n") }, "lists no models"},
		{"missing", func(c *Config) { c.ModelsFile = "/nonexistent/models.yaml" }, "no such file"},
		{"negative", func(c *Config) {
			c.ModelsFile = writeModelsFile(t, "models:\n  - {model: /m/a, replicas: -1}\n  - {model: /m/b}\n")
		}, "cannot be negative"},
		{"two LoRA models", func(c *Config) {
			c.ModelsFile = writeModelsFile(t, "models:\n  - {model: /m/a, lora: [x=/l/x]}\n  - {model: /m/b, vllm_args: [--enable-lora]}\n")
		}, `both "a" and "b" serve LoRA adapters`},
		{"adapter named as a model", func(c *Config) {
			c.ModelsFile = writeModelsFile(t, "models:\n  - {model: /m/a, lora: [b=/l/x]}\n  - {model: /m/b}\n")
		}, `adapter name "b" is taken`},
		{"vLLM argument the agent manages", func(c *Config) {
			c.ModelsFile = writeModelsFile(t, "models:\n  - {model: /m/a, vllm_args: [--port, '9']}\n  - {model: /m/b}\n")
		}, "--port"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := base
			tt.set(&c)
			_, err := c.ModelEntries()
			require.Error(t, err)
			assert.ErrorContains(t, err, tt.want)
		})
	}
}

// TestModelEntries: a models file's entries, one per repeated --model, or the job's own model;
// each entry's configuration is the job's with the entry's model, arguments and adapters.
func TestModelEntries(t *testing.T) {
	ok := testAdapter(t, 8)
	c := Default()
	c.Model, c.ServedModelName, c.Replicas = "/m/one", "one", 2
	entries, err := c.ModelEntries()
	require.NoError(t, err)
	assert.Equal(t, []ModelEntry{{Model: "/m/one", ServedModelName: "one", Replicas: 2}}, entries)

	c = Default()
	c.Model, c.MoreModels = "/m/a", []string{"/m/b"}
	entries, err = c.ModelEntries()
	require.NoError(t, err)
	assert.Equal(t, []ModelEntry{{Model: "/m/a"}, {Model: "/m/b"}}, entries)

	c = Default()
	c.VLLMArgs = []string{"--max-model-len", "4096"}
	c.ModelsFile = writeModelsFile(t, "models:\n  - {model: /m/a, replicas: 2, tensor_parallel_size: 2, vllm_args: [--max-model-len, '8192'], lora: [x="+ok+"]}\n  - {model: /m/b, served_model_name: bee}\n")
	entries, err = c.ModelEntries()
	require.NoError(t, err)
	require.Len(t, entries, 2)
	a := c.ForEntry(entries[0])
	assert.Equal(t, "/m/a", a.Model)
	assert.Equal(t, 2, a.TensorParallel)
	assert.Equal(t, []string{"--max-model-len", "8192"}, a.VLLMArgs, "the entry's arguments win")
	assert.Empty(t, a.ModelsFile, "a node's configuration is of one model")
	assert.True(t, a.ServesLoRA())
	b := c.ForEntry(entries[1])
	assert.Equal(t, "bee", b.ServedName())
	assert.Equal(t, c.TensorParallel, b.TensorParallel)
	assert.False(t, b.ServesLoRA())
	b.VLLMArgs = []string{"--enable-lora"}
	assert.True(t, b.ServesLoRA(), "LoRA on for adapters added at run time")
	ads, err := a.Adapters()
	require.NoError(t, err)
	assert.Equal(t, []vllm.Adapter{{Name: "x", Path: ok}}, ads)
}

func TestLoRAConfig(t *testing.T) {
	ok := testAdapter(t, 8)
	c, err := Resolve([]byte("model: /m/tiny\nlora: [\"a="+ok+"\"]\n"), func(string) string { return "" },
		[]Setting{{Name: "lora", Value: "b=" + ok}, {Name: "lora", Value: "c=" + ok}})
	require.NoError(t, err)
	assert.Equal(t, []string{"b=" + ok, "c=" + ok}, c.LoRA, "the command line replaces the file's list")
	ads, err := c.Adapters()
	require.NoError(t, err)
	assert.Equal(t, []vllm.Adapter{{Name: "b", Path: ok}, {Name: "c", Path: ok}}, ads)
	for _, tt := range []struct {
		flags []Setting
		want  string
	}{
		{[]Setting{{Name: "lora", Value: "nopath"}}, "NAME=PATH"},
		{[]Setting{{Name: "lora", Value: "a=" + ok}, {Name: "lora", Value: "a=" + ok}}, `"a" is taken`},
		{[]Setting{{Name: "lora", Value: "tiny=" + ok}}, `"tiny" is taken`},
	} {
		_, err := Resolve([]byte("model: /m/tiny\n"), func(string) string { return "" }, tt.flags)
		assert.ErrorIs(t, err, ErrInvalid)
		assert.ErrorContains(t, err, tt.want)
	}
	_, err = Resolve(nil, func(k string) string {
		return map[string]string{"LLM_AGENT_LORA": "x=" + ok + " y=" + ok, "LLM_AGENT_VLLM_ARG": "--enforce-eager"}[k]
	}, nil)
	assert.NoError(t, err, "two list options from the environment")
}
