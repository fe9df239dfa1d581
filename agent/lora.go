package agent

import (
	"fmt"
	"slices"
	"sync"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/vllm"
)

// loraPlan is how the engine serves LoRA adapters: whether it does, up to which rank, and the
// adapters it serves, those of --lora and those the owner added at run time.
type loraPlan struct {
	enabled bool
	maxRank int

	mu       sync.Mutex
	adapters []vllm.Adapter
}

// prepareLoRA reads the --lora adapters (each must be there and loadable before any process
// starts) and sizes --max-lora-rank: the user's own when given, which must hold every adapter,
// else the smallest vLLM accepts for the largest adapter, else vLLM's default.
func (a *agent) prepareLoRA() error {
	var err error
	if a.lora, err = loraPlanFor(a.cfg); err != nil {
		return err
	}
	a.loraJob = a.lora
	if !a.lora.on() && a.alloc.IsHead() {
		// The model that serves adapters runs on other nodes: the head's gateway and
		// connection file still speak for it.
		for _, p := range a.models {
			if p.LoRA {
				if a.loraJob, err = loraPlanFor(p.Config); err != nil {
					return fmt.Errorf("model %s: %w", p.Name, err)
				}
			}
		}
	}
	return nil
}

// loraPlanFor plans LoRA for the model of cfg.
func loraPlanFor(cfg config.Config) (*loraPlan, error) {
	specs, err := cfg.Adapters()
	if err != nil {
		return nil, err
	}
	s := vllm.ReadSettings(cfg.VLLMArgs)
	p := &loraPlan{enabled: cfg.ServesLoRA()}
	top := 0
	for _, spec := range specs {
		ad, err := vllm.ReadAdapter(spec.Name, spec.Path)
		if err != nil {
			return nil, fmt.Errorf("%w: --lora: %w", ErrBadInput, err)
		}
		top = max(top, ad.Rank)
		p.adapters = append(p.adapters, ad)
	}
	switch {
	case s.MaxLoRARank > 0 && s.MaxLoRARank < top:
		return nil, fmt.Errorf("%w: --vllm-arg=--max-lora-rank %d is below the rank of an adapter (%d); leave it out and the agent sizes it", ErrBadInput, s.MaxLoRARank, top)
	case s.MaxLoRARank > 0:
		p.maxRank = s.MaxLoRARank
	case top == 0:
		p.maxRank = vllm.DefaultMaxLoRARank // no adapter yet: vLLM's own default
	default:
		p.maxRank = vllm.RankFor(top)
	}
	return p, nil
}

// on tells whether the engine serves adapters.
func (p *loraPlan) on() bool { return p != nil && p.enabled }

// spec sets the LoRA part of the engine's command line: what a restarted engine starts with
// includes the adapters added at run time, so that a restart does not lose them.
func (p *loraPlan) spec(s vllm.ServeSpec) vllm.ServeSpec {
	if !p.on() {
		return s
	}
	s.LoRA, s.MaxLoRARank = true, p.maxRank
	s.Adapters = p.list()
	return s
}

// list returns the adapters served now.
func (p *loraPlan) list() []vllm.Adapter {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.adapters)
}

// loaded records an adapter the engine loaded at run time (it replaces one of the same name).
func (p *loraPlan) loaded(ad vllm.Adapter) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.adapters = slices.DeleteFunc(p.adapters, func(x vllm.Adapter) bool { return x.Name == ad.Name })
	p.adapters = append(p.adapters, ad)
}

// changed records what the gateway says the engine loaded (path set) or unloaded at run time,
// so that a restarted engine serves the same adapters.
func (p *loraPlan) changed(name, path string) {
	if path != "" {
		p.loaded(vllm.Adapter{Name: name, Path: path})
	} else {
		p.unloaded(name)
	}
}

// unloaded records an adapter the engine unloaded at run time.
func (p *loraPlan) unloaded(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.adapters = slices.DeleteFunc(p.adapters, func(x vllm.Adapter) bool { return x.Name == name })
}

// connectionAdapters lists adapters as the connection file does.
func connectionAdapters(ads []vllm.Adapter) []jobfiles.Adapter {
	out := make([]jobfiles.Adapter, 0, len(ads))
	for _, ad := range ads {
		out = append(out, jobfiles.Adapter{Name: ad.Name, Path: ad.Path})
	}
	return out
}

// adapterChanged hears from the gateway that the engine loaded (path set) or unloaded an
// adapter at the owner's request: a restarted engine starts with the same adapters, and the
// connection file lists them.
func (h *head) adapterChanged(name, path string) {
	a := h.agent
	a.loraJob.changed(name, path)
	if path != "" {
		h.log.Info("LoRA adapter loaded", "adapter", name, "path", path)
	} else {
		h.log.Info("LoRA adapter unloaded", "adapter", name)
	}
	if err := h.conn.Update(func(c *jobfiles.Connection) { c.Adapters = connectionAdapters(a.loraJob.list()) }); err != nil {
		h.log.Warn("cannot update the connection file", "error", err)
	}
}
