package head

import (
	"errors"
	"os"
	"path/filepath"

	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/vllm"
)

// sharedTargetsPath is the job's file in the directory a login-node Prometheus watches with one
// glob (file_sd globs only the last path element), or "" when there is none.
func (h *head) sharedTargetsPath() string {
	dir := h.env.Cfg.TargetsDir
	if dir == "" {
		home := h.env.Getenv("HOME")
		if home == "" {
			return ""
		}
		dir = filepath.Join(home, ".llm-agent", "targets")
	}
	if dir == "none" {
		return ""
	}
	return filepath.Join(dir, h.env.Alloc.JobID+".json")
}

// writeTargets lists every published node's metrics endpoint in file_sd format.
func (h *head) writeTargets(infos []jobfiles.NodeInfo) error {
	groups := jobfiles.Targets(h.env.Alloc.JobID, infos, vllm.EngineMetricsPath)
	if h.env.Cfg.Service != "" {
		// Every job of a service carries its name: a dashboard that selects by service
		// draws the service's weeks as one graph across its jobs.
		for _, g := range groups {
			g.Labels["service"] = h.env.Cfg.Service
		}
	}
	if err := jobfiles.WriteJSONAtomic(filepath.Join(h.env.StateDir, jobfiles.TargetsFile), groups, 0o644); err != nil {
		return err
	}
	if p := h.sharedTargetsPath(); p != "" {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		return jobfiles.WriteJSONAtomic(p, groups, 0o644)
	}
	return nil
}

// removeTargets withdraws the job's targets once its service is over.
func (h *head) removeTargets() {
	_ = jobfiles.WriteJSONAtomic(filepath.Join(h.env.StateDir, jobfiles.TargetsFile), []jobfiles.TargetGroup{}, 0o644)
	if p := h.sharedTargetsPath(); p != "" {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			h.env.Log.Warn("cannot remove prometheus targets", "path", p, "error", err)
		}
	}
}
