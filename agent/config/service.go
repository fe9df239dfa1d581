package config

import (
	"fmt"
	"strings"
	"time"

	"github.com/llm-agent/llm-agent/agent/scale"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/slurm"
	"github.com/llm-agent/llm-agent/vllm"
)

// Scaling is the service's scaling settings (agent/scale); an engine's capacity is its
// --max-num-seqs, vLLM's default of 256 when not given.
func (c Config) Scaling() scale.Settings {
	capacity := vllm.ReadSettings(c.VLLMArgs).MaxNumSeqs
	if capacity <= 0 {
		capacity = vllm.DefaultMaxNumSeqs
	}
	return scale.Settings{MaxJobs: c.MaxJobs, Target: float64(c.ScaleTarget), Window: c.ScaleWindow, Interval: c.ScaleInterval,
		UpDelay: c.ScaleUpDelay, DownDelay: c.ScaleDownDelay, Capacity: capacity}
}

// MinIdleRelease is the shortest --idle-release: a job is released only after this long with
// no request arriving, well past the gateway's own waits.
const MinIdleRelease = 10 * time.Second

// validateService checks the options of a service.
func (c Config) validateService() error {
	if c.Service == "" {
		if c.Until != "" || c.For != 0 {
			return fmt.Errorf("%w: --until and --for keep a service up; give it a name with --service", ErrInvalid)
		}
		if c.IdleRelease != 0 {
			return fmt.Errorf("%w: --idle-release lets a service sleep and wake again; give it a name with --service", ErrInvalid)
		}
		if c.MaxJobs > 1 || c.ExtraOf != "" {
			return fmt.Errorf("%w: --max-jobs adds jobs to a service; give it a name with --service", ErrInvalid)
		}
		return nil
	}
	if err := c.Scaling().Check(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if c.IdleRelease < 0 || (c.IdleRelease > 0 && c.IdleRelease < MinIdleRelease) {
		return fmt.Errorf("%w: --idle-release %s: give at least %s, or leave it out for a service that never sleeps", ErrInvalid, c.IdleRelease, MinIdleRelease)
	}
	if err := jobfiles.CheckServiceName(c.Service); err != nil {
		return fmt.Errorf("%w: --service: %w", ErrInvalid, err)
	}
	if c.Until != "" && c.For != 0 {
		return fmt.Errorf("%w: give --until or --for, not both", ErrInvalid)
	}
	if c.Until != "" {
		if _, err := ParseUntil(c.Until); err != nil {
			return fmt.Errorf("%w: --until: %w", ErrInvalid, err)
		}
	}
	return nil
}

// parseLongDuration reads a duration as Go writes it, with days ("7d", "1d12h"), or as Slurm's
// time limits ("7-00:00:00").
func parseLongDuration(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	days := time.Duration(0)
	if d, rest, ok := strings.Cut(v, "d"); ok && !strings.Contains(d, ":") {
		var n int
		if _, err := fmt.Sscanf(d, "%d", &n); err != nil || n < 0 || fmt.Sprint(n) != d {
			return 0, fmt.Errorf("%q is not a duration such as 7d, 36h or 7-00:00:00", v)
		}
		days, v = time.Duration(n)*24*time.Hour, rest
		if v == "" {
			return days, nil
		}
	}
	d, err := slurm.ParseTimeLimit(v)
	if err != nil || d+days <= 0 {
		return 0, fmt.Errorf("%q is not a duration such as 7d, 36h or 7-00:00:00", v)
	}
	return d + days, nil
}

// ParseUntil reads --until: RFC 3339, or a local date and time.
func ParseUntil(v string) (time.Time, error) {
	v = strings.TrimSpace(v)
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02T15:04:05", "2006-01-02T15:04", "2006-01-02 15:04", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, v, time.Local); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a time such as 2026-12-24T18:00 or 2026-12-24T18:00:00+01:00", v)
}
