package agent

import (
	"fmt"
	"os"
	"strings"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/layout"
)

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
	places, err := layout.PlaceModels(a.cfg, entries, a.alloc.Nodes)
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
	a.cfg = mine.Config
	a.replicas.Count = total
	return nil
}

// logPlacement says, on the head, where each model runs. --model given more than once serves
// each model: a site wrapper that adds a default --model before the user's makes a job of two
// models, and this is where that shows.
func (a *agent) logPlacement(places []layout.ModelPlace, entries []config.ModelEntry, total int) {
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
		if !config.LooksLikePath(m) {
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
