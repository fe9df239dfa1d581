package jobfiles

import (
	"net"
	"strconv"
)

// TargetsFile is the Prometheus file_sd file the head writes next to the connection file.
const TargetsFile = "targets.json"

// TargetGroup is one entry of a Prometheus file_sd file.
type TargetGroup struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

// Targets lists every published node's metrics endpoint of job in file_sd form. With enginePath
// set, the head's engine, and each worker's replica engine, is a target of its own on that path
// of its node's metrics port, with role "engine": Prometheus scrapes the engine's series as the
// engine wrote them. A node that runs several replicas serves each one's on a path of its own
// (EngineMetricsPathOf), each target labelled with its replica, NODE/SLOT as the gateway names it.
func Targets(job string, infos []NodeInfo, enginePath string) []TargetGroup {
	groups := make([]TargetGroup, 0, len(infos)+1)
	for _, n := range infos {
		target := []string{net.JoinHostPort(n.Address, strconv.Itoa(n.MetricsPort))}
		groups = append(groups, TargetGroup{
			Targets: target,
			Labels:  map[string]string{"job_id": job, "node": n.Host, "role": n.Role},
		})
		if (n.Role != "head" && len(n.ReplicaPorts) == 0) || enginePath == "" {
			continue
		}
		for slot := range max(1, len(n.ReplicaPorts)) {
			labels := map[string]string{"job_id": job, "node": n.Host, "role": "engine", "__metrics_path__": EngineMetricsPathOf(enginePath, slot)}
			if len(n.ReplicaPorts) > 1 {
				labels["replica"] = n.Host + "/" + strconv.Itoa(slot)
			}
			groups = append(groups, TargetGroup{Targets: target, Labels: labels})
		}
	}
	return groups
}

// EngineMetricsPathOf is the path of a node's metrics port that serves the engine of a slot:
// enginePath for the first, enginePath/SLOT for the others.
func EngineMetricsPathOf(enginePath string, slot int) string {
	if slot == 0 {
		return enginePath
	}
	return enginePath + "/" + strconv.Itoa(slot)
}
