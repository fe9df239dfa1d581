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

// Targets lists every published node's metrics endpoint of job in file_sd form.
func Targets(job string, infos []NodeInfo) []TargetGroup {
	groups := make([]TargetGroup, 0, len(infos))
	for _, n := range infos {
		groups = append(groups, TargetGroup{
			Targets: []string{net.JoinHostPort(n.Address, strconv.Itoa(n.MetricsPort))},
			Labels:  map[string]string{"job_id": job, "node": n.Host, "role": n.Role},
		})
	}
	return groups
}
