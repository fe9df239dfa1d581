package jobfiles

import (
	"path/filepath"
	"time"
)

// A service that sleeps (--idle-release) keeps in its folder what it takes to queue its job
// again: the job's batch script and its sbatch options. Slurm forgets an ended job's script
// minutes after its end (MinJobAge), so the sleeping job saves them before it ends.

// The files of a sleeping service's wake record, in the service's folder.
const (
	WakeScriptFile = "wake.sbatch"
	WakeRecordFile = "wake.json"
)

// Wake is the job a wake queued.
type Wake struct {
	JobID     string    `json:"job_id"`
	Submitted time.Time `json:"submitted_at"`
	// By says who woke the service: llm-agent service wake, the tunnel or the Python client.
	By string `json:"by,omitempty"`
}

// WakeRecord is how to queue the service's job again: sbatch with Args, then the script, then
// the agent's own options.
type WakeRecord struct {
	// Job is the job that fell asleep, whose script and options these are.
	Job       string   `json:"job_id"`
	Args      []string `json:"sbatch_args"`
	AgentArgs []string `json:"agent_args"`
	// Env are the job's LLM_AGENT_* settings from its submission's environment, which sbatch
	// passed on and a wake from another shell would not.
	Env   []string  `json:"agent_env,omitempty"`
	Saved time.Time `json:"saved_at"`
}

// WriteWakeRecord saves the record and the batch script in the service's folder dir, each
// written atomically and readable by the owner alone.
func WriteWakeRecord(dir string, r WakeRecord, script []byte) error {
	if err := WriteFileAtomic(filepath.Join(dir, WakeScriptFile), script, 0o700); err != nil {
		return err
	}
	return WriteJSONAtomic(filepath.Join(dir, WakeRecordFile), r, 0o600)
}

// ReadWakeRecord reads the service's wake record from its folder dir.
func ReadWakeRecord(dir string) (WakeRecord, error) {
	var r WakeRecord
	err := ReadJSON(filepath.Join(dir, WakeRecordFile), &r)
	return r, err
}
