package layout

import (
	"fmt"

	"github.com/llm-agent/llm-agent/agent/config"
)

// Replicas is how many whole engines of the model the job runs, and how many of them each node
// runs (0 or 1: one). Count 0 or 1 is one engine, which may span the nodes.
type Replicas struct {
	Count, PerNode int
}

// Parallelism is how the model is split: tensor parallel within a node, pipeline across nodes.
type Parallelism struct {
	Tensor, Pipeline int
}

// ChooseParallelism fills in the sizes not given (0): tensor parallel is the GPUs of a node and
// pipeline parallel the number of nodes. It rejects combinations the allocation cannot hold.
func ChooseParallelism(tensor, pipeline, nodes, gpusPerNode int) (Parallelism, error) {
	p := Parallelism{Tensor: tensor, Pipeline: pipeline}
	if p.Tensor == 0 {
		p.Tensor = max(gpusPerNode, 1)
	}
	if p.Pipeline == 0 {
		p.Pipeline = nodes
	}
	if gpusPerNode == 0 {
		if p.Tensor > 1 {
			return Parallelism{}, fmt.Errorf("%w: tensor parallel %d needs GPUs, and this allocation has none on its nodes", config.ErrInvalid, p.Tensor)
		}
		return p, nil
	}
	if p.Tensor > gpusPerNode {
		return Parallelism{}, fmt.Errorf("%w: tensor parallel %d exceeds the %d GPUs of a node; tensor parallelism stays within a node, so use at most %d and raise pipeline parallel",
			config.ErrInvalid, p.Tensor, gpusPerNode, gpusPerNode)
	}
	if total := nodes * gpusPerNode; p.Tensor*p.Pipeline > total {
		return Parallelism{}, fmt.Errorf("%w: tensor parallel %d x pipeline parallel %d = %d GPUs, but the allocation has %d nodes x %d GPUs = %d",
			config.ErrInvalid, p.Tensor, p.Pipeline, p.Tensor*p.Pipeline, nodes, gpusPerNode, total)
	}
	return p, nil
}
