package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/llm-agent/llm-agent/jobfiles"
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
		return nil, fmt.Errorf("%w: --models-file: %w", ErrConfig, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var f modelsFile
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: --models-file %s: %w", ErrConfig, path, err)
	}
	if len(f.Models) == 0 {
		return nil, fmt.Errorf("%w: --models-file %s lists no models (expected models: [{model: PATH}, ...])", ErrConfig, path)
	}
	return f.Models, nil
}

// ModelEntries returns the models the job serves: the models file's, else one per --model. A
// job of one model without a models file has one entry made of the job's own options.
func (c Config) ModelEntries() ([]ModelEntry, error) {
	var entries []ModelEntry
	switch {
	case c.ModelsFile != "" && (c.Model != "" || c.ServedModelName != "" || len(c.LoRA) > 0):
		return nil, fmt.Errorf("%w: --models-file names the models, their served names and their adapters: leave out --model, --served-model-name and --lora", ErrConfig)
	case c.ModelsFile != "":
		var err error
		if entries, err = ReadModelsFile(c.ModelsFile); err != nil {
			return nil, err
		}
	case len(c.MoreModels) > 0:
		if c.ServedModelName != "" || len(c.LoRA) > 0 {
			return nil, fmt.Errorf("%w: with several --model, --served-model-name and --lora would be ambiguous: write a models file (--models-file) instead", ErrConfig)
		}
		for _, m := range append([]string{c.Model}, c.MoreModels...) {
			entries = append(entries, ModelEntry{Model: m})
		}
	default:
		return []ModelEntry{{Model: c.Model, ServedModelName: c.ServedModelName, Replicas: c.Replicas, LoRA: c.LoRA}}, nil
	}
	switch {
	case c.Replicas > 0:
		return nil, fmt.Errorf("%w: with several models, give each its replicas in the models file rather than --replicas", ErrConfig)
	case !c.Gateway:
		return nil, fmt.Errorf("%w: several models need the gateway (--gateway=true), which routes each request by its model", ErrConfig)
	case c.PipelineParallel > 1:
		return nil, fmt.Errorf("%w: each model's replica runs on one node; --pipeline-parallel-size %d is not supported with a models file", ErrConfig, c.PipelineParallel)
	}
	names, lora := map[string]bool{}, ""
	for i, e := range entries {
		if e.Model == "" {
			return nil, fmt.Errorf("%w: models entry %d has no model", ErrConfig, i+1)
		}
		if e.Replicas < 0 || e.TensorParallel < 0 {
			return nil, fmt.Errorf("%w: models entry %d (%s): replicas and tensor_parallel_size cannot be negative", ErrConfig, i+1, e.Model)
		}
		one := c.forEntry(e)
		name := one.ServedName()
		if names[name] {
			return nil, fmt.Errorf("%w: two models are served as %q: give one a served_model_name", ErrConfig, name)
		}
		names[name] = true
		if one.servesLoRA() {
			if lora != "" {
				return nil, fmt.Errorf("%w: both %q and %q serve LoRA adapters; one model of a job may, so that each adapter's requests have one place to go", ErrConfig, lora, name)
			}
			lora = name
		}
		if err := CheckExtraArgs(e.VLLMArgs); err != nil {
			return nil, fmt.Errorf("models entry %s: %w", name, err)
		}
	}
	for _, e := range entries {
		ads, err := c.forEntry(e).Adapters()
		if err != nil {
			return nil, err
		}
		for _, ad := range ads {
			if names[ad.Name] {
				return nil, fmt.Errorf("%w: the adapter name %q is taken by another model", ErrConfig, ad.Name)
			}
			names[ad.Name] = true
		}
	}
	return entries, nil
}

// forEntry is the configuration of a node that serves the entry's model.
func (c Config) forEntry(e ModelEntry) Config {
	c.Model, c.ServedModelName, c.LoRA, c.MoreModels, c.ModelsFile = e.Model, e.ServedModelName, e.LoRA, nil, ""
	if e.TensorParallel > 0 {
		c.TensorParallel = e.TensorParallel
	}
	c.VLLMArgs = vllm.Merge(c.VLLMArgs, e.VLLMArgs)
	return c
}

// ModelPlace is where one model runs: its replicas' nodes, in node order.
type ModelPlace struct {
	// Name is the model's served name; Model what the engine loads.
	Name, Model string
	Nodes       []string
	// LoRA tells that the model serves adapters; at most one model of a job does.
	LoRA bool
	// cfg is the configuration of a node that serves the model.
	cfg Config
}

// PlaceModels gives each model its nodes, one per replica, in the order of the entries: an entry
// that names its replicas gets that many, and the others share the nodes left evenly (the first
// ones one more when they do not divide). It refuses, with the numbers, when the nodes do not
// suffice.
func PlaceModels(c Config, entries []ModelEntry, nodes []string) ([]ModelPlace, error) {
	asked, open := 0, 0
	var parts []string
	for _, e := range entries {
		name := c.forEntry(e).ServedName()
		if e.Replicas > 0 {
			asked += e.Replicas
			parts = append(parts, fmt.Sprintf("%s: %d", name, e.Replicas))
		} else {
			open++
			parts = append(parts, name+": at least 1")
		}
	}
	if need := asked + open; need > len(nodes) {
		return nil, fmt.Errorf("%w: the models need %d nodes, one per replica (%s), and this job has %d: replicas whose model spans nodes are not supported, so ask for more nodes or fewer replicas",
			ErrBadInput, need, strings.Join(parts, ", "), len(nodes))
	}
	left := len(nodes) - asked
	var out []ModelPlace
	next := 0
	for _, e := range entries {
		n := e.Replicas
		if n == 0 {
			n = left / open
			if left%open > 0 {
				n++
			}
			left -= n
			open--
		}
		one := c.forEntry(e)
		out = append(out, ModelPlace{Name: one.ServedName(), Model: e.Model, Nodes: nodes[next : next+n],
			LoRA: one.servesLoRA(), cfg: one})
		next += n
	}
	return out, nil
}

// placeModels reads the job's models and, when it serves several, places them on the nodes and
// turns this node's configuration into that of the model it serves. A node that serves none
// (more nodes than replicas) keeps the first model's and stays idle.
func (a *agent) placeModels() error {
	entries, err := a.cfg.ModelEntries()
	if err != nil {
		return err
	}
	if len(entries) == 1 && a.cfg.ModelsFile == "" {
		return nil // one model, as the options say
	}
	places, err := PlaceModels(a.cfg, entries, a.alloc.Nodes)
	if err != nil {
		return err
	}
	mine, total := places[0], 0
	for _, p := range places {
		total += len(p.Nodes)
		for _, n := range p.Nodes {
			if n == a.alloc.Hostname() {
				mine = p
			}
		}
	}
	if a.alloc.IsHead() {
		a.logPlacement(places, entries, total)
	}
	a.models = places
	a.cfg = mine.cfg
	a.cfg.Replicas = total
	return nil
}

// logPlacement says, on the head, where each model runs. --model given more than once serves
// each model: a site wrapper that adds a default --model before the user's makes a job of two
// models, and this is where that shows.
func (a *agent) logPlacement(places []ModelPlace, entries []ModelEntry, total int) {
	if a.cfg.ModelsFile == "" {
		a.log.Info("several models, from --model given more than once; give one --model, or a --models-file, for one model", "models", len(entries))
	}
	for _, p := range places {
		a.log.Info("model placed", "name", p.Name, "model", p.Model, "nodes", strings.Join(p.Nodes, ","))
	}
	if total < len(a.alloc.Nodes) {
		a.log.Warn("the models use fewer nodes than the job has; the others stay idle", "used", total, "nodes", len(a.alloc.Nodes))
	}
}

// checkModelDirs ends the job before anything starts when a model given as a path is not
// there: this node's model, and on the head every model of the job.
func (a *agent) checkModelDirs() error {
	models := []string{a.cfg.Model}
	if a.alloc.IsHead() && len(a.models) > 0 {
		models = nil
		for _, p := range a.models {
			models = append(models, p.Model)
		}
	}
	for _, m := range models {
		if !looksLikePath(m) {
			continue
		}
		if fi, err := os.Stat(m); err != nil || !fi.IsDir() {
			return fmt.Errorf("%w: model directory %q does not exist; give the path of a downloaded model or a Hugging Face id", ErrBadInput, m)
		}
	}
	return nil
}

// multiModel tells whether the job serves several models.
func (a *agent) multiModel() bool { return len(a.models) > 1 }

// modelOf returns the served name and LoRA use of the model a node serves.
func (a *agent) modelOf(host string) (string, bool) {
	for _, p := range a.models {
		for _, n := range p.Nodes {
			if n == host {
				return p.Name, p.LoRA
			}
		}
	}
	return a.cfg.ServedName(), a.lora.on()
}

// modelPlacements is how the rendezvous and the connection file list the models.
func modelPlacements(places []ModelPlace, tensor map[string]int) []jobfiles.ModelPlacement {
	var out []jobfiles.ModelPlacement
	for _, p := range places {
		out = append(out, jobfiles.ModelPlacement{Name: p.Name, Model: p.Model, Nodes: p.Nodes,
			Tensor: tensor[p.Name], LoRA: p.LoRA})
	}
	return out
}
