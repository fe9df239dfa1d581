package vllm

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestOptions(t *testing.T) {
	got := Options([]string{"--max_model_len=4096", "--enforce-eager", "--temperature", "-1", "-q", "fp8", "stray", "--x.y", "3"})
	assert.Equal(t, []Option{
		{Name: "--max-model-len", Value: "4096", Index: 0, Span: 1},
		{Name: "--enforce-eager", Index: 1, Span: 1},
		{Name: "--temperature", Value: "-1", Index: 2, Span: 2},
		{Name: "-q", Value: "fp8", Index: 4, Span: 2},
		{Name: "--x", Value: "3", Index: 7, Span: 2},
	}, got)
}

func TestReadSettings(t *testing.T) {
	s := ReadSettings([]string{"--max-model-len=4096", "--gpu-memory-utilization", "0.8", "--dtype", "auto", "-q", "fp8",
		"--kv-cache-dtype", "fp8_e4m3", "--scheduling-policy=priority"})
	assert.Equal(t, Settings{MaxModelLen: 4096, GPUMemoryUtilization: 0.8, Quantization: "fp8", KVCacheDtype: "fp8_e4m3",
		SchedulingPolicy: "priority"}, s)
	assert.Equal(t, "fcfs", ReadSettings([]string{"--scheduling-policy", "priority", "--scheduling_policy", "fcfs"}).SchedulingPolicy,
		"the last one wins")
	assert.Equal(t, Settings{}, ReadSettings(nil))
}

func TestMerge(t *testing.T) {
	merged := Merge([]string{"--max-num-seqs", "8", "--max-model-len", "2048", "--enable-prefix-caching"},
		[]string{"--max-model-len=4096", "--no-enable-prefix-caching"})
	assert.Equal(t, []string{"--max-num-seqs", "8", "--max-model-len=4096", "--no-enable-prefix-caching"}, merged, "the user's flags win")
	assert.Equal(t, []string{"--a", "1"}, Merge([]string{"--a", "1"}, nil))
	assert.Equal(t, []string{"--b"}, Merge(nil, []string{"--b"}))
	assert.Equal(t, []string{"--max_model_len=1"}, Merge([]string{"--max-model-len", "9"}, []string{"--max_model_len=1"}),
		"the same option in either spelling")
}
