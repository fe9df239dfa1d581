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
