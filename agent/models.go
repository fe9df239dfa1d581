package agent

import (
	"fmt"
	"os"
	"strings"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/layout"
	"github.com/llm-agent/llm-agent/agent/lora"
	"github.com/llm-agent/llm-agent/agent/node"
)

// placeModels reads the job's models and, when it serves several, places them on the nodes and
// turns this node's configuration into that of the model it serves. A node that serves none
// (more nodes than replicas) keeps the first model's and stays idle.
func placeModels(e *node.Env) error {
	entries, err := e.Cfg.ModelEntries()
	if err != nil {
		return err
	}
	if len(entries) == 1 && e.Cfg.ModelsFile == "" {
		return nil // one model, as the options say
	}
	places, err := layout.PlaceModels(e.Cfg, entries, e.Alloc.Nodes)
	if err != nil {
		return err
	}
	mine, total := places[0], 0
	for _, p := range places {
		total += len(p.Nodes)
		for _, n := range p.Nodes {
			if n == e.Alloc.Hostname() {
				mine = p
			}
		}
	}
	if e.Alloc.IsHead() {
		logPlacement(e, places, entries, total)
	}
	e.Models = places
	e.Cfg = mine.Config
	e.Replicas.Count = total
	return nil
}

// logPlacement says, on the head, where each model runs. --model given more than once serves
// each model: a site wrapper that adds a default --model before the user's makes a job of two
// models, and this is where that shows.
func logPlacement(e *node.Env, places []layout.ModelPlace, entries []config.ModelEntry, total int) {
	if e.Cfg.ModelsFile == "" {
		e.Log.Info("several models, from --model given more than once; give one --model, or a --models-file, for one model", "models", len(entries))
	}
	for _, p := range places {
		e.Log.Info("model placed", "name", p.Name, "model", p.Model, "nodes", strings.Join(p.Nodes, ","))
	}
	if total < len(e.Alloc.Nodes) {
		e.Log.Warn("the models use fewer nodes than the job has; the others stay idle", "used", total, "nodes", len(e.Alloc.Nodes))
	}
}

// checkModelDirs ends the job before anything starts when a model given as a path is not
// there: this node's model, and on the head every model of the job.
func checkModelDirs(e *node.Env) error {
	models := []string{e.Cfg.Model}
	if e.Alloc.IsHead() && len(e.Models) > 0 {
		models = nil
		for _, p := range e.Models {
			models = append(models, p.Model)
		}
	}
	for _, m := range models {
		if !config.LooksLikePath(m) {
			continue
		}
		if fi, err := os.Stat(m); err != nil || !fi.IsDir() {
			return fmt.Errorf("%w: model directory %q does not exist; give the path of a downloaded model or a Hugging Face id", ErrBadInput, m)
		}
	}
	return nil
}

// prepareLoRA reads the --lora adapters (each must be there and loadable before any process
// starts) and sizes --max-lora-rank: the user's own when given, which must hold every adapter,
// else the smallest vLLM accepts for the largest adapter, else vLLM's default.
func prepareLoRA(e *node.Env) error {
	var err error
	if e.LoRA, err = lora.For(e.Cfg); err != nil {
		return err
	}
	e.LoRAJob = e.LoRA
	if !e.LoRA.On() && e.Alloc.IsHead() {
		// The model that serves adapters runs on other nodes: the head's gateway and
		// connection file still speak for it.
		for _, p := range e.Models {
			if p.LoRA {
				if e.LoRAJob, err = lora.For(p.Config); err != nil {
					return fmt.Errorf("model %s: %w", p.Name, err)
				}
			}
		}
	}
	return nil
}
