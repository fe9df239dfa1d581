//go:build cgo

package main

import (
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// TestWakeBadInput: a wake of a service that does not exist, that ended, whose folder others
// could write to, or with a bad name or no name, exits 2 with a message that says what; so
// does run with --max-jobs below 1.
func TestWakeBadInput(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	dir := jobfiles.ServiceDir(home, "ended")
	_, err := jobfiles.UpdateService(dir, func(f *jobfiles.ServiceFile) error {
		f.Service = jobfiles.ServiceInfo{Name: "ended", State: jobfiles.ServiceStopped, Ended: true, Reason: "llm-agent stop --service"}
		return nil
	})
	require.NoError(t, err)
	open := jobfiles.ServiceDir(home, "open")
	_, err = jobfiles.UpdateService(open, func(f *jobfiles.ServiceFile) error {
		f.Service = jobfiles.ServiceInfo{Name: "open", State: jobfiles.ServiceAsleep}
		return nil
	})
	require.NoError(t, err)
	require.NoError(t, os.Chmod(open, 0o777)) // another user could plant a script to run
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"service", "wake"}, "service wake takes one argument"},
		{[]string{"service", "wake", "chat", "--wait", "1m"}, "after the options"},
		{[]string{"service", "wake", "../x"}, `name "../x": use up to 64 letters`},
		{[]string{"service", "wake", "nosuch"}, `no service "nosuch"`},
		{[]string{"service", "wake", "ended"}, "service ended has ended (stopped: llm-agent stop --service); start it again with sbatch"},
		{[]string{"service", "wake", "open"}, "other users could write to it"},
		{[]string{"run", "--model", t.TempDir(), "--service", "s", "--max-jobs", "0"}, "--max-jobs"},
		{[]string{"run", "--model", t.TempDir(), "--service", "s", "--max-jobs", "2", "--scale-window", "1s"}, "shorter than the sampling interval"},
	} {
		code, out := run(tc.args...)
		assert.Equal(t, 2, code, "%v: %s", tc.args, out)
		assert.Contains(t, out, tc.want, "%v", tc.args)
	}
}
