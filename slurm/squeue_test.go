package slurm

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseTime(t *testing.T) {
	tm, err := parseTime("2026-11-26T18:30:00")
	require.NoError(t, err)
	assert.Equal(t, time.Date(2026, 11, 26, 18, 30, 0, 0, time.Local), tm)
	for _, none := range []string{"N/A", "NONE", "", "Unknown"} {
		tm, err := parseTime(none)
		assert.NoError(t, err)
		assert.True(t, tm.IsZero())
	}
	_, err = parseTime("tomorrow")
	assert.Error(t, err)
}

func TestParseTimeLimit(t *testing.T) {
	for in, want := range map[string]time.Duration{"240": 4 * time.Hour, "04:00:00": 4 * time.Hour, "30:00": 30 * time.Minute,
		"1-00:00:00": 24 * time.Hour, "2-12": 60 * time.Hour, "1-01:30": 25*time.Hour + 30*time.Minute, "4h": 4 * time.Hour} {
		got, err := ParseTimeLimit(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	for _, bad := range []string{"", "soon", "1:2:3:4", "x-1", "0"} {
		_, err := ParseTimeLimit(bad)
		assert.ErrorIs(t, err, ErrTimeLimit, bad)
	}
}
