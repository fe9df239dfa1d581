package head

import "github.com/llm-agent/llm-agent/jobfiles"

// adapterChanged hears from the gateway that the engine loaded (path set) or unloaded an
// adapter at the owner's request: a restarted engine starts with the same adapters, and the
// connection file lists them.
func (h *head) adapterChanged(name, path string) {
	e := h.env
	e.LoRAJob.Changed(name, path)
	if path != "" {
		h.env.Log.Info("LoRA adapter loaded", "adapter", name, "path", path)
	} else {
		h.env.Log.Info("LoRA adapter unloaded", "adapter", name)
	}
	if err := h.conn.Update(func(c *jobfiles.Connection) { c.Adapters = e.LoRAJob.Connection() }); err != nil {
		h.env.Log.Warn("cannot update the connection file", "error", err)
	}
}
