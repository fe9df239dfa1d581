package plan

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// ErrPreset is wrapped by errors about presets.
var ErrPreset = errors.New("preset")

// Preset is one named set of vLLM options and the Slurm resources it assumes.
type Preset struct {
	Name        string       `yaml:"-"`
	Description string       `yaml:"description"`
	Slurm       PresetSlurm  `yaml:"slurm"`
	VLLM        PresetEngine `yaml:"vllm"`
}

// PresetSlurm is the allocation a preset is sized for.
type PresetSlurm struct {
	Nodes       int     `yaml:"nodes"`
	GPUsPerNode int     `yaml:"gpus_per_node"`
	GPUMemoryGB float64 `yaml:"gpu_memory"`
	CPUsPerTask int     `yaml:"cpus_per_task"`
	Time        string  `yaml:"time"`
}

// PresetEngine is the vLLM side of a preset; zero values are left to vLLM.
type PresetEngine struct {
	MaxNumSeqs           int     `yaml:"max_num_seqs"`
	MaxNumBatchedTokens  int     `yaml:"max_num_batched_tokens"`
	MaxModelLen          int     `yaml:"max_model_len"`
	GPUMemoryUtilization float64 `yaml:"gpu_memory_utilization"`
	EnablePrefixCaching  *bool   `yaml:"enable_prefix_caching"`
	EnforceEager         bool    `yaml:"enforce_eager"`
	Quantization         string  `yaml:"quantization"`
	KVCacheDtype         string  `yaml:"kv_cache_dtype"`
}

// Args returns the preset's `vllm serve` flags.
func (e PresetEngine) Args() []string {
	var a []string
	add := func(flag, v string) { a = append(a, flag, v) }
	if e.MaxNumSeqs > 0 {
		add("--max-num-seqs", strconv.Itoa(e.MaxNumSeqs))
	}
	if e.MaxNumBatchedTokens > 0 {
		add("--max-num-batched-tokens", strconv.Itoa(e.MaxNumBatchedTokens))
	}
	if e.MaxModelLen > 0 {
		add("--max-model-len", strconv.Itoa(e.MaxModelLen))
	}
	if e.GPUMemoryUtilization > 0 {
		add("--gpu-memory-utilization", strconv.FormatFloat(e.GPUMemoryUtilization, 'f', -1, 64))
	}
	if e.EnablePrefixCaching != nil {
		if *e.EnablePrefixCaching {
			a = append(a, "--enable-prefix-caching")
		} else {
			a = append(a, "--no-enable-prefix-caching")
		}
	}
	if e.EnforceEager {
		a = append(a, "--enforce-eager")
	}
	if e.Quantization != "" {
		add("--quantization", e.Quantization)
	}
	if e.KVCacheDtype != "" {
		add("--kv-cache-dtype", e.KVCacheDtype)
	}
	return a
}

// ParsePresets reads a presets file; unknown keys are errors.
func ParsePresets(data []byte) (map[string]Preset, error) {
	var doc struct {
		Presets map[string]Preset `yaml:"presets"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("%w: presets file: %w", ErrPreset, err)
	}
	if len(doc.Presets) == 0 {
		return nil, fmt.Errorf("%w: presets file defines no presets", ErrPreset)
	}
	for name, p := range doc.Presets {
		p.Name = name
		if p.Description == "" || p.Slurm.Nodes < 1 || p.Slurm.GPUsPerNode < 1 {
			return nil, fmt.Errorf("%w: preset %s needs a description and slurm nodes and gpus_per_node", ErrPreset, name)
		}
		if u := p.VLLM.GPUMemoryUtilization; u < 0 || u > 1 {
			return nil, fmt.Errorf("%w: preset %s: gpu_memory_utilization %v is not in (0, 1]", ErrPreset, name, u)
		}
		doc.Presets[name] = p
	}
	return doc.Presets, nil
}

// Lookup returns the preset called name.
func Lookup(presets map[string]Preset, name string) (Preset, error) {
	p, ok := presets[name]
	if !ok {
		return Preset{}, fmt.Errorf("%w: unknown preset %q; choose one of %s (llm-agent presets)", ErrPreset, name, strings.Join(Names(presets), ", "))
	}
	return p, nil
}

// Names lists the presets in a stable order.
func Names(presets map[string]Preset) []string {
	return slices.Sorted(maps.Keys(presets))
}
