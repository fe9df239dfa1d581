package agent

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/slurm"
)

// crashHelperEnv makes the test binary a worker's agent that panics in a goroutine of its own.
const crashHelperEnv = "LLM_AGENT_TEST_CRASH_DIR"

// TestCrashHelper is the crashing agent when crashHelperEnv is set; otherwise it does nothing.
func TestCrashHelper(t *testing.T) {
	dir := os.Getenv(crashHelperEnv)
	if dir == "" {
		return
	}
	a := &agent{stateDir: dir, alloc: slurm.Allocation{Nodes: []string{"n1", "n2"}, NodeID: 1}}
	require.NoError(t, a.recordCrashes())
	done := make(chan struct{})
	go func() { panic("boom in a stage") }()
	<-done
}

// TestCrashReportReachesTheHead: an agent whose goroutine panics leaves its report in the state
// directory, and the head, finding it silent, quotes the panic instead of guessing.
func TestCrashReportReachesTheHead(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "logs"), 0o700))
	// An earlier launch's report is not this launch's.
	require.NoError(t, os.WriteFile(crashFile(dir, "n2"), []byte("panic: an old one\n"), 0o600))
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$")
	cmd.Env = append(os.Environ(), crashHelperEnv+"="+dir)
	out, err := cmd.CombinedOutput()
	require.Error(t, err, "the helper crashes: %s", out)
	assert.Equal(t, "panic: boom in a stage", crashReport(dir, "n2"))
	b, err := os.ReadFile(crashFile(dir, "n2"))
	require.NoError(t, err)
	assert.Contains(t, string(b), "goroutine", "the whole report, with the stacks")
	assert.NotContains(t, string(b), "an old one")
	fi, err := os.Stat(crashFile(dir, "n2"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	require.NoError(t, jobfiles.NewNodeFile(dir, "n2").Publish(jobfiles.NodeInfo{Host: "n2", Address: "127.0.0.1", MetricsPort: 1}))
	err = workerFailure(dir, []string{"n2"}, func(jobfiles.NodeInfo) bool { return false })
	require.Error(t, err)
	assert.Equal(t, "n2's agent crashed: panic: boom in a stage (the whole report: "+crashFile(dir, "n2")+"); Slurm ended the job step", err.Error())
}

func TestCrashReportFirstLine(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "logs"), 0o700))
	assert.Empty(t, crashReport(dir, "n2"), "no file: no report")
	require.NoError(t, os.WriteFile(crashFile(dir, "n2"), []byte("\n\n  fatal error: concurrent map writes  \n\ngoroutine 1\n"), 0o600))
	assert.Equal(t, "fatal error: concurrent map writes", crashReport(dir, "n2"))
	require.NoError(t, os.WriteFile(crashFile(dir, "n2"), []byte("panic: "+strings.Repeat("x", 2*crashLineLimit)), 0o600))
	assert.Len(t, []rune(crashReport(dir, "n2")), crashLineLimit+1, "bounded, with an ellipsis")
	require.NoError(t, os.WriteFile(crashFile(dir, "n2"), nil, 0o600))
	assert.Empty(t, crashReport(dir, "n2"), "an empty file: no crash")
}

// TestRecordCrashesFails: a crash file that cannot be made fresh is an error, not a report
// silently lost.
func TestRecordCrashesFails(t *testing.T) {
	dir := t.TempDir()
	a := &agent{stateDir: dir, alloc: slurm.Allocation{Nodes: []string{"n1"}}}
	assert.ErrorContains(t, a.recordCrashes(), "crash report file", "no logs directory")
	require.NoError(t, os.MkdirAll(filepath.Join(crashFile(dir, "n1"), "x"), 0o700))
	assert.ErrorContains(t, a.recordCrashes(), "crash report file", "a directory in its place")
}
