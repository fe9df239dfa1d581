package vllm

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestCheckExtraArgs(t *testing.T) {
	refused := []struct{ arg, flag string }{
		{"--port", "--port"},
		{"--port=9000", "--port"},
		{"--por", "--port"},
		{"--host=0.0.0.0", "--host"},
		{"--ho", "--host"},
		{"--uds", "--uds"},
		{"--api-key", "--api-key"},
		{"--api_key=abc", "--api-key"},
		{"--api-k", "--api-key"},
		{"--served_model_name", "--served-model-name"},
		{"--served-model-name.x", "--served-model-name"},
		{"--served-mod", "--served-model-name"},
		{"--model=/other", "--model"},
		{"--config", "--config"},
		{"--config=/tmp/x.yaml", "--config"},
		{"--conf", "--config"},
		{"--tensor-parallel-size=8", "--tensor-parallel-size"},
		{"--tensor_parallel", "--tensor-parallel-size"},
		{"-tp", "--tensor-parallel-size"},
		{"-tp=8", "--tensor-parallel-size"},
		{"-t", "--tensor-parallel-size"},
		{"-pp", "--pipeline-parallel-size"},
		{"-p", "--pipeline-parallel-size"},
		{"--distributed-executor-backend=mp", "--distributed-executor-backend"},
		{"--grpc", "--grpc"},
		{"--grpc-port=50051", "--grpc-port"},
		{"--headless", "--headless"},
		{"-n2", "--nnodes"},
		{"-n", "--nnodes"},
		{"-r1", "--node-rank"},
		{"--master-port=1", "--master-port"},
		{"--", "the end of vLLM's options"},
	}
	for _, tt := range refused {
		err := CheckExtraArgs([]string{"--enforce-eager", tt.arg})
		if assert.ErrorIs(t, err, ErrManagedFlag, tt.arg) {
			assert.Contains(t, err.Error(), "would set "+tt.flag, tt.arg)
		}
	}
	allowed := [][]string{
		nil,
		{"--max-num-seqs", "8", "--enforce-eager"},
		{"--max_model_len=4096"},
		{"-O3"},
		{"-dp", "2"},
		{"-pcp", "2"},
		{"--compilation-config.level", "3"},
		{"--chat-template", "/t.jinja"},
		{"--temperature", "-1"},
		{"--config-format", "hf"},
		{"--model-impl", "vllm"},
		{"--port-range"}, // not a prefix of --port: argparse would refuse it as unknown
	}
	for _, args := range allowed {
		assert.NoError(t, CheckExtraArgs(args), "%q", args)
	}
}

func TestOptionName(t *testing.T) {
	for arg, want := range map[string]string{"--a_b=c_d": "--a-b", "--x.y_z": "--x", "-t_p": "-t_p", "--": "--"} {
		got, ok := optionName(arg)
		assert.True(t, ok, arg)
		assert.Equal(t, want, got, arg)
	}
	for _, v := range []string{"8", "-", "-1", "-.5", "/path", ""} {
		_, ok := optionName(v)
		assert.False(t, ok, v)
	}
}
