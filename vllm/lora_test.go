package vllm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// writeAdapter makes an adapter directory with config (adapter_config.json) and, with weights,
// adapter_model.safetensors.
func writeAdapter(t *testing.T, config string, weights bool) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "adapter_config.json"), []byte(config), 0o644))
	if weights {
		require.NoError(t, os.WriteFile(filepath.Join(dir, "adapter_model.safetensors"), []byte("x"), 0o644))
	}
	return dir
}

func TestParseAdapterSpec(t *testing.T) {
	name, path, err := ParseAdapterSpec("sql=/data/sql-lora")
	require.NoError(t, err)
	assert.Equal(t, "sql", name)
	assert.Equal(t, "/data/sql-lora", path)
	_, path, err = ParseAdapterSpec("a=rel/dir")
	require.NoError(t, err)
	assert.True(t, filepath.IsAbs(path), "a relative path is made absolute: %s", path)
	for _, bad := range []string{"", "noequals", "=/p", "a=", "bad name=/p", "-x=/p", "a/b=/p", strings.Repeat("a", 129) + "=/p"} {
		_, _, err := ParseAdapterSpec(bad)
		assert.ErrorIs(t, err, ErrAdapter, "%q", bad)
	}
}

func TestReadAdapter(t *testing.T) {
	ad, err := ReadAdapter("a", writeAdapter(t, `{"peft_type": "LORA", "r": 12, "target_modules": ["q_proj"]}`, true))
	require.NoError(t, err)
	assert.Equal(t, 12, ad.Rank)
	assert.Equal(t, "a", ad.Name)
	bin := writeAdapter(t, `{"r": 8}`, false)
	require.NoError(t, os.WriteFile(filepath.Join(bin, "adapter_model.bin"), []byte("x"), 0o644))
	_, err = ReadAdapter("b", bin)
	assert.NoError(t, err, "PyTorch weights and no peft_type are accepted, as vLLM does")
	for _, tt := range []struct{ name, dir, want string }{
		{"relative path", "rel", "absolute path"},
		{"no config", t.TempDir(), "adapter_config.json"},
		{"not JSON", writeAdapter(t, `r: 8`, true), "adapter_config.json"},
		{"no rank", writeAdapter(t, `{"peft_type": "LORA"}`, true), "no positive rank"},
		{"zero rank", writeAdapter(t, `{"r": 0}`, true), "no positive rank"},
		{"rank too large", writeAdapter(t, `{"r": 1024}`, true), "above vLLM's largest"},
		{"not LoRA", writeAdapter(t, `{"peft_type": "IA3", "r": 8}`, true), "LORA adapters only"},
		{"no weights", writeAdapter(t, `{"r": 8}`, false), "adapter_model.safetensors"},
	} {
		_, err := ReadAdapter("x", tt.dir)
		assert.ErrorIs(t, err, ErrAdapter, tt.name)
		assert.ErrorContains(t, err, tt.want, tt.name)
	}
	_, err = ReadAdapter("bad name", "/p")
	assert.ErrorIs(t, err, ErrAdapter)
	big := writeAdapter(t, `{"r": 8, "pad": "`+strings.Repeat("x", maxAdapterConfig)+`"}`, true)
	_, err = ReadAdapter("x", big)
	assert.ErrorContains(t, err, "larger than")
}

func TestRankFor(t *testing.T) {
	for r, want := range map[int]int{1: 1, 2: 8, 8: 8, 9: 16, 16: 16, 33: 64, 300: 320, 512: 512, 600: 512} {
		assert.Equal(t, want, RankFor(r), "rank %d", r)
	}
}

func TestServeArgsWithLoRA(t *testing.T) {
	spec := ServeSpec{Model: "/m", ServedName: "m", Socket: "/d/engine.sock", Tensor: 1, Pipeline: 1, LoRA: true, MaxLoRARank: 16,
		Adapters: []Adapter{{Name: "sql", Path: "/a/sql"}, {Name: "odd", Path: "/a/with,comma"}}, Extra: []string{"--max-loras", "2"}}
	assert.Equal(t, `serve /m --uds /d/engine.sock --served-model-name m --tensor-parallel-size 1 --pipeline-parallel-size 1 `+
		`--enable-lora --max-lora-rank 16 --lora-modules {"name":"sql","path":"/a/sql","base_model_name":"m"} `+
		`{"name":"odd","path":"/a/with,comma","base_model_name":"m"} --max-loras 2`,
		strings.Join(ServeArgs(spec), " "), "JSON modules: any path, and the model as their parent")
	spec.Adapters = nil
	assert.Equal(t, []string{"--enable-lora", "--max-lora-rank", "16", "--max-loras", "2"}, ServeArgs(spec)[10:],
		"LoRA on with no adapter yet: they come at run time")
}

func TestReadLoRASettings(t *testing.T) {
	s := ReadSettings([]string{"--enable-lora", "--max-lora-rank", "64"})
	assert.True(t, s.EnableLoRA)
	assert.Equal(t, 64, s.MaxLoRARank)
	assert.False(t, ReadSettings([]string{"--enable-lora", "--no-enable-lora"}).EnableLoRA, "the last one wins")
	assert.ErrorIs(t, CheckExtraArgs([]string{"--lora-modules", "a=/p"}), ErrManagedFlag)
	assert.ErrorIs(t, CheckExtraArgs([]string{"--lora_modules=a=/p"}), ErrManagedFlag)
	assert.NoError(t, CheckExtraArgs([]string{"--enable-lora", "--max-lora-rank", "64", "--max-loras", "4"}))
}
