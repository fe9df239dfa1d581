package vllm

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// ErrAdapter is wrapped by every refusal of a LoRA adapter.
var ErrAdapter = errors.New("LoRA adapter")

// Adapter is a LoRA adapter the engine serves under its own model name.
type Adapter struct {
	Name string `json:"name"`
	// Path is the adapter's directory: adapter_config.json and its weights.
	Path string `json:"path"`
	// Rank is the adapter's rank, r in its config.
	Rank int `json:"rank"`
}

// MaxLoRARanks are the values vLLM accepts for --max-lora-rank (vllm/config/lora.py).
var MaxLoRARanks = []int{1, 8, 16, 32, 64, 128, 256, 320, 512}

// DefaultMaxLoRARank is vLLM's --max-lora-rank when it is not given.
const DefaultMaxLoRARank = 16

// adapterName is what an adapter may be called: the characters of a served model name, so that
// it is one plain word in URLs, logs, metrics labels and the keys file.
var adapterName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`)

// ParseAdapterSpec reads NAME=PATH, as llm-agent's --lora takes it. The path is made absolute:
// the engine, its other ranks and `llm-agent lora` read it from other working directories.
func ParseAdapterSpec(spec string) (name, path string, err error) {
	name, path, ok := strings.Cut(spec, "=")
	if !ok || name == "" || path == "" {
		return "", "", fmt.Errorf("%w: %q: give NAME=PATH", ErrAdapter, spec)
	}
	if err := CheckAdapterName(name); err != nil {
		return "", "", err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", "", fmt.Errorf("%w %s: %w", ErrAdapter, name, err)
	}
	return name, abs, nil
}

// CheckAdapterName refuses a name that is not one plain word.
func CheckAdapterName(name string) error {
	if !adapterName.MatchString(name) {
		return fmt.Errorf("%w: name %q: use letters, digits and . _ : - (at most 128, starting with a letter or digit)", ErrAdapter, name)
	}
	return nil
}

// maxAdapterConfig bounds adapter_config.json.
const maxAdapterConfig = 1 << 20

// ReadAdapter checks that path holds a LoRA adapter vLLM can load (adapter_config.json of a
// LoRA with a positive rank, and its weights) and returns it with its rank.
func ReadAdapter(name, path string) (Adapter, error) {
	fail := func(format string, a ...any) (Adapter, error) {
		return Adapter{}, fmt.Errorf("%w %s: %s", ErrAdapter, name, fmt.Sprintf(format, a...))
	}
	if err := CheckAdapterName(name); err != nil {
		return Adapter{}, err
	}
	if !filepath.IsAbs(path) {
		return fail("%s: give the adapter's directory as an absolute path", path)
	}
	f, err := os.Open(filepath.Join(path, "adapter_config.json"))
	if err != nil {
		return fail("%v (an adapter directory holds adapter_config.json and adapter_model.safetensors)", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxAdapterConfig+1))
	if err != nil {
		return fail("read adapter_config.json: %v", err)
	}
	if len(b) > maxAdapterConfig {
		return fail("adapter_config.json is larger than %d bytes", maxAdapterConfig)
	}
	var cfg struct {
		PeftType string `json:"peft_type"`
		R        *int   `json:"r"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return fail("adapter_config.json: %v", err)
	}
	if cfg.PeftType != "" && !strings.EqualFold(cfg.PeftType, "LORA") {
		return fail("adapter_config.json: peft_type %q: vLLM serves LORA adapters only", cfg.PeftType)
	}
	if cfg.R == nil || *cfg.R <= 0 {
		return fail("adapter_config.json: no positive rank r")
	}
	if *cfg.R > MaxLoRARanks[len(MaxLoRARanks)-1] {
		return fail("rank %d is above vLLM's largest --max-lora-rank, %d", *cfg.R, MaxLoRARanks[len(MaxLoRARanks)-1])
	}
	found := false
	for _, w := range []string{"adapter_model.safetensors", "adapter_model.bin", "adapter_model.pt"} {
		if fi, err := os.Stat(filepath.Join(path, w)); err == nil && fi.Mode().IsRegular() {
			found = true
			break
		}
	}
	if !found {
		return fail("%s holds no adapter_model.safetensors (nor .bin)", path)
	}
	return Adapter{Name: name, Path: path, Rank: *cfg.R}, nil
}

// RankFor returns the --max-lora-rank that serves adapters of rank up to r: the smallest value
// vLLM accepts that is at least r.
func RankFor(r int) int {
	for _, v := range MaxLoRARanks {
		if v >= r {
			return v
		}
	}
	return MaxLoRARanks[len(MaxLoRARanks)-1]
}

// LoRAArgs returns the `vllm serve` options that serve adapters, each under its name with the
// served model as its parent, with LoRA enabled up to maxRank. The modules are written in
// vLLM's JSON form, which takes any path (its NAME=PATH form breaks on a comma).
func LoRAArgs(adapters []Adapter, maxRank int, parent string) []string {
	args := []string{"--enable-lora", "--max-lora-rank", fmt.Sprint(maxRank)}
	if len(adapters) == 0 {
		return args
	}
	args = append(args, "--lora-modules")
	for _, a := range adapters {
		b, _ := json.Marshal(struct {
			Name   string `json:"name"`
			Path   string `json:"path"`
			Parent string `json:"base_model_name,omitempty"`
		}{a.Name, a.Path, parent})
		args = append(args, string(b))
	}
	return args
}

// RuntimeLoRAEnv lets the engine load and unload adapters while it runs
// (/v1/load_lora_adapter); the gateway keeps those routes to the job's owner.
const RuntimeLoRAEnv = "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"
