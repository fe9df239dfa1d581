package head

import (
	"path/filepath"

	"github.com/llm-agent/llm-agent/vllm"
)

// apiKeyFile is the file the job's key is read from: --api-key-file, else a service's own key
// for all its jobs; "" makes a key for the job.
func (h *head) apiKeyFile() string {
	if h.env.Cfg.APIKeyFile == "" && h.env.Cfg.KeysFile == "" && h.service != nil {
		return h.service.KeyFile()
	}
	return h.env.Cfg.APIKeyFile
}

// engineEndpoint is where vLLM listens: a Unix socket in the node's private directory behind
// the gateway, so that only the job's user can reach it; the public port without the gateway.
func (h *head) engineEndpoint() vllm.Endpoint {
	if h.env.Cfg.Gateway {
		return vllm.Endpoint{Socket: filepath.Join(h.env.LocalDir, vllm.SocketName)}
	}
	return vllm.Endpoint{Port: h.ports.API}
}
