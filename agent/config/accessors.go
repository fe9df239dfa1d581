package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/llm-agent/llm-agent/agent/bytesize"
	"github.com/llm-agent/llm-agent/vllm"
)

// What the rest of the agent reads of a checked configuration.

// Adapters returns the --lora adapters, named and with absolute paths (not yet read: the head
// reads them before the engine starts). Names must differ from each other and from the model's.
func (c Config) Adapters() ([]vllm.Adapter, error) {
	var out []vllm.Adapter
	seen := map[string]bool{c.ServedName(): true}
	for _, spec := range c.LoRA {
		name, path, err := vllm.ParseAdapterSpec(spec)
		if err != nil {
			return nil, fmt.Errorf("%w: --lora: %w", ErrInvalid, err)
		}
		if seen[name] {
			return nil, fmt.Errorf("%w: --lora: the name %q is taken (by the model or another adapter)", ErrInvalid, name)
		}
		seen[name] = true
		out = append(out, vllm.Adapter{Name: name, Path: path})
	}
	return out, nil
}

// ServedName returns the name clients use for the model: the configured one, else a local
// model directory's last element, else the Hugging Face id as given.
func (c Config) ServedName() string {
	if c.ServedModelName != "" {
		return c.ServedModelName
	}
	if LooksLikePath(c.Model) {
		return filepath.Base(strings.TrimRight(c.Model, "/"))
	}
	if _, err := os.Stat(c.Model); err == nil {
		return filepath.Base(strings.TrimRight(c.Model, "/"))
	}
	return c.Model
}

// looksLikePath tells a model written as a path from one that may be a Hugging Face id
// ("org/name" or "name").
func LooksLikePath(model string) bool {
	return strings.HasPrefix(model, "/") || strings.HasPrefix(model, ".") || strings.HasPrefix(model, "~") ||
		strings.Count(model, "/") > 1
}

// MaxRequestBodyBytes is --max-request-body in bytes; Validate has checked that it parses.
func (c Config) MaxRequestBodyBytes() int64 {
	n, _ := bytesize.Parse(c.MaxRequestBody)
	return n
}
