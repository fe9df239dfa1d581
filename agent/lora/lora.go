// Package lora is how an engine serves LoRA adapters: whether it does, up to which rank, and
// the adapters it serves, those of --lora and those the owner adds or removes at run time, so
// that a restarted engine starts with the same ones.
package lora

import (
	"fmt"
	"slices"
	"sync"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/vllm"
)

// Plan is one model's LoRA plan; a nil Plan serves no adapters.
type Plan struct {
	enabled bool
	maxRank int

	mu       sync.Mutex
	adapters []vllm.Adapter
}

// For plans LoRA for the model of cfg: each --lora adapter must be there and loadable, and
// --max-lora-rank is the user's own when given, which must hold every adapter, else the
// smallest vLLM accepts for the largest adapter, else vLLM's default.
func For(cfg config.Config) (*Plan, error) {
	specs, err := cfg.Adapters()
	if err != nil {
		return nil, err
	}
	s := vllm.ReadSettings(cfg.VLLMArgs)
	p := &Plan{enabled: cfg.ServesLoRA()}
	top := 0
	for _, spec := range specs {
		ad, err := vllm.ReadAdapter(spec.Name, spec.Path)
		if err != nil {
			return nil, fmt.Errorf("%w: --lora: %w", config.ErrBadInput, err)
		}
		top = max(top, ad.Rank)
		p.adapters = append(p.adapters, ad)
	}
	switch {
	case s.MaxLoRARank > 0 && s.MaxLoRARank < top:
		return nil, fmt.Errorf("%w: --vllm-arg=--max-lora-rank %d is below the rank of an adapter (%d); leave it out and the agent sizes it", config.ErrBadInput, s.MaxLoRARank, top)
	case s.MaxLoRARank > 0:
		p.maxRank = s.MaxLoRARank
	case top == 0:
		p.maxRank = vllm.DefaultMaxLoRARank // no adapter yet: vLLM's own default
	default:
		p.maxRank = vllm.RankFor(top)
	}
	return p, nil
}

// On tells whether the engine serves adapters.
func (p *Plan) On() bool { return p != nil && p.enabled }

// MaxRank is the engine's --max-lora-rank.
func (p *Plan) MaxRank() int {
	if p == nil {
		return 0
	}
	return p.maxRank
}

// Spec sets the LoRA part of the engine's command line: what a restarted engine starts with
// includes the adapters added at run time, so that a restart does not lose them.
func (p *Plan) Spec(s vllm.ServeSpec) vllm.ServeSpec {
	if !p.On() {
		return s
	}
	s.LoRA, s.MaxLoRARank = true, p.maxRank
	s.Adapters = p.List()
	return s
}

// List returns the adapters served now.
func (p *Plan) List() []vllm.Adapter {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.adapters)
}

// Changed records what the gateway says the engine loaded (path set) or unloaded at run time,
// so that a restarted engine serves the same adapters; a loaded adapter replaces one of the
// same name.
func (p *Plan) Changed(name, path string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.adapters = slices.DeleteFunc(p.adapters, func(x vllm.Adapter) bool { return x.Name == name })
	if path != "" {
		p.adapters = append(p.adapters, vllm.Adapter{Name: name, Path: path})
	}
}

// Connection lists the adapters served now as the connection file does.
func (p *Plan) Connection() []jobfiles.Adapter {
	ads := p.List()
	out := make([]jobfiles.Adapter, 0, len(ads))
	for _, ad := range ads {
		out = append(out, jobfiles.Adapter{Name: ad.Name, Path: ad.Path})
	}
	return out
}
