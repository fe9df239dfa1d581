package agent

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// SqueueEndTime asks Slurm for a job's end time with squeue, for Slurm versions before 23.02
// that do not set SLURM_JOB_END_TIME. A job without a time limit has a zero end time.
func SqueueEndTime(ctx context.Context, jobID string) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "squeue", "-h", "-j", jobID, "-o", "%e").Output()
	if err != nil {
		return time.Time{}, fmt.Errorf("squeue end time of job %s: %w", jobID, err)
	}
	return parseSlurmTime(strings.TrimSpace(string(out)))
}

// parseSlurmTime parses Slurm's local "2006-01-02T15:04:05"; "N/A", "NONE" and "Unknown" mean
// no end time.
func parseSlurmTime(s string) (time.Time, error) {
	switch s {
	case "", "N/A", "NONE", "Unknown", "UNLIMITED":
		return time.Time{}, nil
	}
	t, err := time.ParseInLocation("2006-01-02T15:04:05", s, time.Local)
	if err != nil {
		return time.Time{}, fmt.Errorf("parse Slurm time %q: %w", s, err)
	}
	return t, nil
}
