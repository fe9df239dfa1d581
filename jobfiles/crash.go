package jobfiles

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"

	"github.com/llm-agent/llm-agent/agent/securefs"
)

// An agent that dies of a panic in any of its goroutines, or of a fatal error of the Go
// runtime, cannot publish its reason itself. The runtime writes its crash report to the file
// that RecordCrashes names, in the state directory every node sees, and the head quotes it when
// the agent goes silent. Only a SIGKILL (the OOM killer, kill -9) then leaves no word at all.

// CrashFile is where host's agent's crash report goes.
func CrashFile(stateDir, host string) string {
	return filepath.Join(stateDir, "logs", host+".agent-crash.log")
}

// RecordCrashes sends the runtime's crash report of this agent to its crash file, made fresh
// for this launch so that an earlier launch's report is never taken for this one's.
func RecordCrashes(stateDir, host string) error {
	path := CrashFile(stateDir, host)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("crash report file: %w", err)
	}
	f, err := securefs.OpenAppend(path)
	if err != nil {
		return fmt.Errorf("crash report file: %w", err)
	}
	defer f.Close() // the runtime keeps its own descriptor
	return debug.SetCrashOutput(f, debug.CrashOptions{})
}

// CrashLineLimit bounds the quoted first line of a crash report.
const CrashLineLimit = 300

// CrashReport returns the first line of host's agent's crash report ("panic: ..." or "fatal
// error: ..."), or "" when it wrote none.
func CrashReport(stateDir, host string) string {
	f, err := os.Open(CrashFile(stateDir, host))
	if err != nil {
		return ""
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 4096), 64*1024)
	for s.Scan() {
		if line := strings.TrimSpace(s.Text()); line != "" {
			if len(line) > CrashLineLimit {
				line = line[:CrashLineLimit] + "…"
			}
			return line
		}
	}
	return ""
}
