package lora

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/vllm"
)

// TestPlanFollowsRuntimeChanges: adapters loaded and unloaded at run time are what a restarted
// engine starts with, and what the connection file lists; one loaded again replaces its
// namesake.
func TestPlanFollowsRuntimeChanges(t *testing.T) {
	p, err := For(config.Config{Model: "/m/tiny", VLLMArgs: []string{"--enable-lora"}})
	require.NoError(t, err)
	require.True(t, p.On())
	assert.Equal(t, vllm.DefaultMaxLoRARank, p.MaxRank())
	p.Changed("chat", "/a/chat")
	p.Changed("code", "/a/code")
	p.Changed("chat", "/a/chat-v2")
	assert.Equal(t, []jobfiles.Adapter{{Name: "code", Path: "/a/code"}, {Name: "chat", Path: "/a/chat-v2"}}, p.Connection())
	spec := p.Spec(vllm.ServeSpec{Model: "m"})
	assert.True(t, spec.LoRA)
	assert.Equal(t, vllm.DefaultMaxLoRARank, spec.MaxLoRARank)
	assert.Len(t, spec.Adapters, 2)
	p.Changed("code", "")
	assert.Equal(t, []vllm.Adapter{{Name: "chat", Path: "/a/chat-v2"}}, p.List())

	var none *Plan
	assert.False(t, none.On())
	assert.Zero(t, none.MaxRank())
	assert.Nil(t, none.List())
	assert.Equal(t, vllm.ServeSpec{Model: "m"}, none.Spec(vllm.ServeSpec{Model: "m"}))
}

func TestPlanRefusesARankBelowAnAdapter(t *testing.T) {
	_, err := For(config.Config{Model: "/m/tiny", LoRA: []string{"a=/does/not/exist"}})
	assert.ErrorIs(t, err, config.ErrBadInput)
	p, err := For(config.Config{Model: "/m/tiny", VLLMArgs: []string{"--enable-lora", "--max-lora-rank", "64"}})
	require.NoError(t, err)
	assert.Equal(t, 64, p.MaxRank())
}
