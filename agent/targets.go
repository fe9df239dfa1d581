package agent

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
)

// TargetsFile is the Prometheus file_sd file the head writes next to the connection file.
const TargetsFile = "targets.json"

// targetGroup is one entry of a Prometheus file_sd file.
type targetGroup struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

// sharedTargetsPath is the job's file in the directory a login-node Prometheus watches with one
// glob (file_sd globs only the last path element), or "" when there is none.
func (h *head) sharedTargetsPath() string {
	dir := h.cfg.TargetsDir
	if dir == "" {
		home := h.deps.Getenv("HOME")
		if home == "" {
			return ""
		}
		dir = filepath.Join(home, ".llm-agent", "targets")
	}
	if dir == "none" {
		return ""
	}
	return filepath.Join(dir, h.alloc.JobID+".json")
}

// writeTargets lists every published node's metrics endpoint in file_sd format.
func (h *head) writeTargets(infos []NodeInfo) error {
	groups := make([]targetGroup, 0, len(infos))
	for _, n := range infos {
		groups = append(groups, targetGroup{
			Targets: []string{net.JoinHostPort(n.Address, strconv.Itoa(n.MetricsPort))},
			Labels:  map[string]string{"job_id": h.alloc.JobID, "node": n.Host, "role": n.Role},
		})
	}
	if err := writeJSONAtomic(filepath.Join(h.stateDir, TargetsFile), groups, 0o644); err != nil {
		return err
	}
	if p := h.sharedTargetsPath(); p != "" {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		return writeJSONAtomic(p, groups, 0o644)
	}
	return nil
}

// removeTargets withdraws the job's targets once its service is over.
func (h *head) removeTargets() {
	_ = writeJSONAtomic(filepath.Join(h.stateDir, TargetsFile), []targetGroup{}, 0o644)
	if p := h.sharedTargetsPath(); p != "" {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			h.log.Warn("cannot remove prometheus targets", "path", p, "error", err)
		}
	}
}
