package head

import (
	"path/filepath"

	"github.com/llm-agent/llm-agent/agent/front"

	"github.com/llm-agent/llm-agent/vllm"
)

// keys are where the clients' keys come from: --api-key-file or --keys-file, else a service's
// own key for all its jobs, else one made for the job. A job a service added under load opens
// to the service's replica key alone: the serving job's gateway has checked the client.
func (h *head) keys() front.Keys {
	cfg := h.env.Cfg
	switch {
	case h.service != nil && h.service.Extra():
		return front.Keys{File: h.service.ReplicaKeyFile()}
	case cfg.APIKeyFile == "" && cfg.KeysFile == "" && h.service != nil:
		return front.Keys{File: h.service.KeyFile()}
	}
	return front.Keys{File: cfg.APIKeyFile, KeysFile: cfg.KeysFile}
}

// engineEndpoint is where vLLM listens: a Unix socket in the node's private directory behind
// the gateway, so that only the job's user can reach it; the public port without the gateway.
func (h *head) engineEndpoint() vllm.Endpoint {
	if h.env.Cfg.Gateway {
		return vllm.Endpoint{Socket: filepath.Join(h.env.LocalDir, vllm.SocketName)}
	}
	return vllm.Endpoint{Port: h.ports.API}
}
