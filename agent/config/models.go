package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"go.yaml.in/yaml/v3"

	"github.com/llm-agent/llm-agent/vllm"
)

// ModelEntry is one model of a job that serves several: from a models file, or one per
// repeated --model.
type ModelEntry struct {
	Model           string `yaml:"model"`
	ServedModelName string `yaml:"served_model_name"`
	// Replicas is how many whole engines of the model run, one per node (0: a share of the
	// nodes the other entries leave).
	Replicas int `yaml:"replicas"`
	// TensorParallel is the GPUs of each replica (0: planned from the model, else the node's).
	TensorParallel int `yaml:"tensor_parallel_size"`
	// VLLMArgs come after the job's --vllm-arg and win over them.
	VLLMArgs []string `yaml:"vllm_args"`
	// LoRA are the model's adapters, NAME=PATH each.
	LoRA []string `yaml:"lora"`
}

// modelsFile is the models file's document.
type modelsFile struct {
	Models []ModelEntry `yaml:"models"`
}

// ReadModelsFile reads a models file: a YAML mapping with one key, models, a list of entries.
// Unknown keys are errors, so that a misspelt one is not silently ignored.
func ReadModelsFile(path string) ([]ModelEntry, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: --models-file: %w", ErrInvalid, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var f modelsFile
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: --models-file %s: %w", ErrInvalid, path, err)
	}
	if len(f.Models) == 0 {
		return nil, fmt.Errorf("%w: --models-file %s lists no models (expected models: [{model: PATH}, ...])", ErrInvalid, path)
	}
	return f.Models, nil
}

// ModelEntries returns the models the job serves: the models file's, else one per --model. A
// job of one model without a models file has one entry made of the job's own options.
func (c Config) ModelEntries() ([]ModelEntry, error) {
	var entries []ModelEntry
	switch {
	case c.ModelsFile != "" && (c.Model != "" || c.ServedModelName != "" || len(c.LoRA) > 0):
		return nil, fmt.Errorf("%w: --models-file names the models, their served names and their adapters: leave out --model, --served-model-name and --lora", ErrInvalid)
	case c.ModelsFile != "":
		var err error
		if entries, err = ReadModelsFile(c.ModelsFile); err != nil {
			return nil, err
		}
	case len(c.MoreModels) > 0:
		if c.ServedModelName != "" || len(c.LoRA) > 0 {
			return nil, fmt.Errorf("%w: with several --model, --served-model-name and --lora would be ambiguous: write a models file (--models-file) instead", ErrInvalid)
		}
		for _, m := range append([]string{c.Model}, c.MoreModels...) {
			entries = append(entries, ModelEntry{Model: m})
		}
	default:
		return []ModelEntry{{Model: c.Model, ServedModelName: c.ServedModelName, Replicas: c.Replicas, LoRA: c.LoRA}}, nil
	}
	switch {
	case c.Replicas > 0:
		return nil, fmt.Errorf("%w: with several models, give each its replicas in the models file rather than --replicas", ErrInvalid)
	case !c.Gateway:
		return nil, fmt.Errorf("%w: several models need the gateway (--gateway=true), which routes each request by its model", ErrInvalid)
	case c.PipelineParallel > 1:
		return nil, fmt.Errorf("%w: each model's replica runs on one node; --pipeline-parallel-size %d is not supported with a models file", ErrInvalid, c.PipelineParallel)
	}
	if err := c.checkEntries(entries); err != nil {
		return nil, err
	}
	return entries, nil
}

// checkEntries refuses entries that lack a model, that two would serve under one name, that
// serve LoRA adapters in two models, or whose arguments or adapters are not allowed.
func (c Config) checkEntries(entries []ModelEntry) error {
	names, lora := map[string]bool{}, ""
	for i, e := range entries {
		if e.Model == "" {
			return fmt.Errorf("%w: models entry %d has no model", ErrInvalid, i+1)
		}
		if e.Replicas < 0 || e.TensorParallel < 0 {
			return fmt.Errorf("%w: models entry %d (%s): replicas and tensor_parallel_size cannot be negative", ErrInvalid, i+1, e.Model)
		}
		one := c.ForEntry(e)
		name := one.ServedName()
		if names[name] {
			return fmt.Errorf("%w: two models are served as %q: give one a served_model_name", ErrInvalid, name)
		}
		names[name] = true
		if one.ServesLoRA() {
			if lora != "" {
				return fmt.Errorf("%w: both %q and %q serve LoRA adapters; one model of a job may, so that each adapter's requests have one place to go", ErrInvalid, lora, name)
			}
			lora = name
		}
		if err := CheckExtraArgs(e.VLLMArgs); err != nil {
			return fmt.Errorf("models entry %s: %w", name, err)
		}
	}
	for _, e := range entries {
		ads, err := c.ForEntry(e).Adapters()
		if err != nil {
			return err
		}
		for _, ad := range ads {
			if names[ad.Name] {
				return fmt.Errorf("%w: the adapter name %q is taken by another model", ErrInvalid, ad.Name)
			}
			names[ad.Name] = true
		}
	}
	return nil
}

// ForEntry is the configuration of a node that serves the entry's model.
func (c Config) ForEntry(e ModelEntry) Config {
	c.Model, c.ServedModelName, c.LoRA, c.MoreModels, c.ModelsFile = e.Model, e.ServedModelName, e.LoRA, nil, ""
	if e.TensorParallel > 0 {
		c.TensorParallel = e.TensorParallel
	}
	c.VLLMArgs = vllm.Merge(c.VLLMArgs, e.VLLMArgs)
	return c
}

// ServesLoRA tells whether the engine of cfg serves LoRA adapters: it has some, or LoRA is on
// for adapters added at run time.
func (c Config) ServesLoRA() bool {
	return len(c.LoRA) > 0 || vllm.ReadSettings(c.VLLMArgs).EnableLoRA
}

// CheckExtraArgs rejects pass-through arguments that would set what the agent manages or leak
// a secret, in any spelling vLLM's parser accepts.
func CheckExtraArgs(extra []string) error {
	if err := vllm.CheckExtraArgs(extra); err != nil {
		return fmt.Errorf("%w: --vllm-arg: %w", ErrInvalid, err)
	}
	return nil
}
