package config

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestServiceOptions(t *testing.T) {
	for v, want := range map[string]time.Duration{"7d": 7 * 24 * time.Hour, "1d12h": 36 * time.Hour, "36h": 36 * time.Hour,
		"7-00:00:00": 7 * 24 * time.Hour, "90": 90 * time.Minute} {
		d, err := parseLongDuration(v)
		require.NoError(t, err, v)
		assert.Equal(t, want, d, v)
	}
	for _, v := range []string{"", "d", "xd", "-1d", "soon"} {
		_, err := parseLongDuration(v)
		assert.Error(t, err, v)
	}
	u, err := ParseUntil("2026-12-24T18:00")
	require.NoError(t, err)
	assert.Equal(t, time.Date(2026, 12, 24, 18, 0, 0, 0, time.Local), u)
	_, err = ParseUntil("Christmas")
	assert.Error(t, err)

	bad := map[string]func(c *Config){
		"--until and --for keep a service up": func(c *Config) { c.For = time.Hour },
		"give --until or --for, not both":     func(c *Config) { c.Service, c.For, c.Until = "s", time.Hour, "2026-12-24" },
		"use up to 64 letters":                func(c *Config) { c.Service = "../x" },
		"--until":                             func(c *Config) { c.Service, c.Until = "s", "tomorrow" },
	}
	for want, f := range bad {
		c := Default()
		f(&c)
		err := c.Validate()
		require.ErrorIs(t, err, ErrInvalid, want)
		assert.Contains(t, err.Error(), want)
	}

}

// TestValidateSleepAndScale: the settings of a service that sleeps or grows that cannot work
// are refused before anything starts.
func TestValidateSleepAndScale(t *testing.T) {
	svc := func(tweak func(c *Config)) error {
		c := Default()
		c.Service = "chat"
		tweak(&c)
		return c.Validate()
	}
	for _, tt := range []struct {
		name  string
		tweak func(c *Config)
		want  string
	}{
		{"idle release without a service", func(c *Config) { c.Service, c.IdleRelease = "", time.Hour }, "--idle-release lets a service sleep"},
		{"idle release too short", func(c *Config) { c.IdleRelease = time.Second }, "--idle-release 1s: give at least 10s"},
		{"more jobs without a service", func(c *Config) { c.Service, c.MaxJobs = "", 3 }, "--max-jobs adds jobs to a service"},
		{"no job", func(c *Config) { c.MaxJobs = 0 }, "--max-jobs 0: give at least 1"},
		{"window under the sampling", func(c *Config) { c.MaxJobs, c.ScaleWindow = 2, time.Second }, "--scale-window 1s is shorter than the sampling interval 5s"},
		{"no target", func(c *Config) { c.MaxJobs, c.ScaleTarget = 2, 0 }, "--scale-target 0"},
	} {
		err := svc(tt.tweak)
		assert.ErrorIs(t, err, ErrInvalid, tt.name)
		assert.ErrorContains(t, err, tt.want, tt.name)
	}
	assert.NoError(t, svc(func(c *Config) { c.IdleRelease, c.MaxJobs = 30*time.Minute, 3 }))
	c := Default()
	c.VLLMArgs = []string{"--max-num-seqs", "16"}
	assert.Equal(t, 16, c.Scaling().Capacity, "an engine's capacity is its --max-num-seqs")
	assert.Equal(t, 256, Default().Scaling().Capacity, "vLLM's default when not given")
}
