package layout

import (
	"fmt"
	"strings"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/jobfiles"
)

// ModelPlace is where one model runs: its replicas' nodes, in node order.
type ModelPlace struct {
	// Name is the model's served name; Model what the engine loads.
	Name, Model string
	Nodes       []string
	// LoRA tells that the model serves adapters; at most one model of a job does.
	LoRA bool
	// Config is the configuration of a node that serves the model.
	Config config.Config
}

// PlaceModels gives each model its nodes, one per replica, in the order of the entries: an entry
// that names its replicas gets that many, and the others share the nodes left evenly (the first
// ones one more when they do not divide). It refuses, with the numbers, when the nodes do not
// suffice.
func PlaceModels(c config.Config, entries []config.ModelEntry, nodes []string) ([]ModelPlace, error) {
	asked, open := 0, 0
	var parts []string
	for _, e := range entries {
		name := c.ForEntry(e).ServedName()
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
			config.ErrBadInput, need, strings.Join(parts, ", "), len(nodes))
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
		one := c.ForEntry(e)
		out = append(out, ModelPlace{Name: one.ServedName(), Model: e.Model, Nodes: nodes[next : next+n],
			LoRA: one.ServesLoRA(), Config: one})
		next += n
	}
	return out, nil
}

// Placements is how the rendezvous and the connection file list the models.
func Placements(places []ModelPlace, tensor map[string]int) []jobfiles.ModelPlacement {
	var out []jobfiles.ModelPlacement
	for _, p := range places {
		out = append(out, jobfiles.ModelPlacement{Name: p.Name, Model: p.Model, Nodes: p.Nodes,
			Tensor: tensor[p.Name], LoRA: p.LoRA})
	}
	return out
}
