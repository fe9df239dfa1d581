package jobfiles

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// crashHelperEnv makes the test binary an agent that panics in a goroutine of its own.
const crashHelperEnv = "LLM_AGENT_TEST_CRASH_DIR"

// TestCrashHelper is the crashing agent when crashHelperEnv is set; otherwise it does nothing.
func TestCrashHelper(t *testing.T) {
	dir := os.Getenv(crashHelperEnv)
	if dir == "" {
		return
	}
	require.NoError(t, RecordCrashes(dir, "n2"))
	done := make(chan struct{})
	go func() { panic("boom in a stage") }()
	<-done
}

// TestCrashReportIsRecorded: an agent whose goroutine panics leaves its whole report, 0600, in
// the state directory, and an earlier launch's report is gone.
func TestCrashReportIsRecorded(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "logs"), 0o700))
	require.NoError(t, os.WriteFile(CrashFile(dir, "n2"), []byte("panic: an old one\n"), 0o600))
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$")
	cmd.Env = append(os.Environ(), crashHelperEnv+"="+dir)
	out, err := cmd.CombinedOutput()
	require.Error(t, err, "the helper crashes: %s", out)
	assert.Equal(t, "panic: boom in a stage", CrashReport(dir, "n2"))
	b, err := os.ReadFile(CrashFile(dir, "n2"))
	require.NoError(t, err)
	assert.Contains(t, string(b), "goroutine", "the whole report, with the stacks")
	assert.NotContains(t, string(b), "an old one")
	fi, err := os.Stat(CrashFile(dir, "n2"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
}

func TestCrashReportFirstLine(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "logs"), 0o700))
	assert.Empty(t, CrashReport(dir, "n2"), "no file: no report")
	require.NoError(t, os.WriteFile(CrashFile(dir, "n2"), []byte("\n\n  fatal error: concurrent map writes  \n\ngoroutine 1\n"), 0o600))
	assert.Equal(t, "fatal error: concurrent map writes", CrashReport(dir, "n2"))
	require.NoError(t, os.WriteFile(CrashFile(dir, "n2"), []byte("panic: "+strings.Repeat("x", 2*CrashLineLimit)), 0o600))
	assert.Len(t, []rune(CrashReport(dir, "n2")), CrashLineLimit+1, "bounded, with an ellipsis")
	require.NoError(t, os.WriteFile(CrashFile(dir, "n2"), nil, 0o600))
	assert.Empty(t, CrashReport(dir, "n2"), "an empty file: no crash")
}

// TestRecordCrashesFails: a crash file that cannot be made fresh is an error, not a report
// silently lost.
func TestRecordCrashesFails(t *testing.T) {
	dir := t.TempDir()
	assert.ErrorContains(t, RecordCrashes(dir, "n1"), "crash report file", "no logs directory")
	require.NoError(t, os.MkdirAll(filepath.Join(CrashFile(dir, "n1"), "x"), 0o700))
	assert.ErrorContains(t, RecordCrashes(dir, "n1"), "crash report file", "a directory in its place")
}
