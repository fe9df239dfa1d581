package slurm

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// ErrTimeLimit is wrapped by errors about a time limit that is not one.
var ErrTimeLimit = errors.New("invalid time limit")

// SqueueEndTime asks Slurm for a job's end time with squeue, for Slurm versions before 23.02
// that do not set SLURM_JOB_END_TIME. A job without a time limit has a zero end time.
func SqueueEndTime(ctx context.Context, jobID string) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "squeue", "-h", "-j", jobID, "-o", "%e").Output()
	if err != nil {
		return time.Time{}, fmt.Errorf("squeue end time of job %s: %w", jobID, err)
	}
	return parseTime(strings.TrimSpace(string(out)))
}

// parseTime parses Slurm's local "2006-01-02T15:04:05"; "N/A", "NONE" and "Unknown" mean
// no end time.
func parseTime(s string) (time.Time, error) {
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

// ParseTimeLimit reads a time limit as sbatch --time takes it ("minutes", "HH:MM:SS",
// "D-HH:MM", ...) or as a Go duration ("4h").
func ParseTimeLimit(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return d, nil
	}
	bad := fmt.Errorf("%w: %q is not a Slurm time such as 240, 04:00:00 or 1-12:00:00", ErrTimeLimit, s)
	days := 0
	rest := s
	if d, r, ok := strings.Cut(s, "-"); ok {
		n, err := strconv.Atoi(d)
		if err != nil || n < 0 {
			return 0, bad
		}
		days, rest = n, r
	}
	var parts []int
	for _, p := range strings.Split(rest, ":") {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return 0, bad
		}
		parts = append(parts, n)
	}
	var h, m, sec int
	switch {
	case days > 0 && len(parts) == 1:
		h = parts[0]
	case days > 0 && len(parts) == 2:
		h, m = parts[0], parts[1]
	case len(parts) == 1:
		m = parts[0]
	case len(parts) == 2 && days == 0:
		m, sec = parts[0], parts[1]
	case len(parts) == 3:
		h, m, sec = parts[0], parts[1], parts[2]
	default:
		return 0, bad
	}
	d := time.Duration(days)*24*time.Hour + time.Duration(h)*time.Hour + time.Duration(m)*time.Minute + time.Duration(sec)*time.Second
	if d <= 0 {
		return 0, bad
	}
	return d, nil
}
