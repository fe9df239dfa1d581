package slurm

import "time"

// ServiceUnits is what a cluster charges for GPUs held for a time: wall hours × GPUs × the
// partition's factor (service units per GPU-hour). The planner's estimate, the agent's
// llm_agent_service_units_total and `llm-agent usage` all use it.
func ServiceUnits(wall time.Duration, gpus int, factor float64) float64 {
	return wall.Hours() * float64(gpus) * factor
}
