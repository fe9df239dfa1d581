package vllm

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestServeArgs(t *testing.T) {
	args := ServeArgs(ServeSpec{Model: "/m", ServedName: "m", Host: "0.0.0.0", Port: 8000, Tensor: 4, Pipeline: 2,
		RayExecutor: true, Extra: []string{"--max-model-len", "8192"}})
	assert.Equal(t, "serve /m --host 0.0.0.0 --port 8000 --served-model-name m --tensor-parallel-size 4 --pipeline-parallel-size 2 "+
		"--distributed-executor-backend ray --max-model-len 8192", strings.Join(args, " "))
	args = ServeArgs(ServeSpec{Model: "/m", ServedName: "m", Host: "0.0.0.0", Port: 8000, Socket: "/d/engine.sock", Tensor: 1, Pipeline: 1})
	assert.Equal(t, "serve /m --uds /d/engine.sock --served-model-name m --tensor-parallel-size 1 --pipeline-parallel-size 1",
		strings.Join(args, " "), "the socket in place of host and port")
}

func TestServeArgsAcrossNodesWithoutRay(t *testing.T) {
	spec := ServeSpec{Model: "/m", ServedName: "m", Socket: "/d/engine.sock", Tensor: 2, Pipeline: 3,
		Nodes: 3, MasterAddr: "10.0.0.1", MasterPort: 31042, Extra: []string{"--max-model-len", "512"}}
	assert.Equal(t, "serve /m --uds /d/engine.sock --served-model-name m --tensor-parallel-size 2 --pipeline-parallel-size 3 "+
		"--distributed-executor-backend mp --nnodes 3 --node-rank 0 --master-addr 10.0.0.1 --master-port 31042 --max-model-len 512",
		strings.Join(ServeArgs(spec), " "), "rank 0 serves the API on the socket")
	spec.NodeRank = 2
	assert.Equal(t, "serve /m --served-model-name m --tensor-parallel-size 2 --pipeline-parallel-size 3 "+
		"--distributed-executor-backend mp --nnodes 3 --node-rank 2 --master-addr 10.0.0.1 --master-port 31042 --headless --max-model-len 512",
		strings.Join(ServeArgs(spec), " "), "the other ranks run headless, with no address")
}
