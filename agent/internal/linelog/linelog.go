// Package linelog copies a child's output to its log file and, line by line, to the agent's
// log, keeping the first line of each run that reports an error (the engine's own words for
// why it failed).
package linelog

import (
	"bytes"
	"io"
	"regexp"
	"sync"

	"github.com/hashicorp/go-hclog"
)

// maxLine bounds one logged line, so a child that prints without newlines cannot grow memory.
const maxLine = 16 << 10

// Logger copies a child's output to a file unchanged and logs it line by line. Stdout and
// stderr share one, so writes are serialised.
type Logger struct {
	mu   sync.Mutex
	file io.Writer
	log  hclog.Logger
	buf  []byte
	// firstError is the first line of the current run that reports an error, such as
	// Python's "ValueError: ...": in a burst of tracebacks the root cause comes first.
	firstError string
	// fileErrors counts the writes to the file that failed (a full disk).
	fileErrors int
}

// errorLine matches an error report at the start of a line or of a log message
// ("... [core.py:1510] ValueError: ...", "torch.OutOfMemoryError: CUDA out of memory ..."),
// not one quoted inside a warning.
var errorLine = regexp.MustCompile(`(^|\] )((?:[a-z_][a-z0-9_]*\.)*[A-Z][A-Za-z]*(Error|Exception): \S.*)`)

// New returns a Logger that copies to file and logs to log.
func New(file io.Writer, log hclog.Logger) *Logger {
	return &Logger{file: file, log: log}
}

// Write writes p to the file and logs every complete line. It never fails: a file that cannot
// be written (a full disk) must not stop the copy of the child's output, or the child would
// block on its full pipe; the lines still reach the agent's log, and the failure is counted.
func (l *Logger) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := l.file.Write(p); err != nil {
		if l.fileErrors == 0 {
			l.log.Warn("cannot write the log file; the output still reaches this log", "error", err)
		}
		l.fileErrors++
	}
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		l.emit(l.buf[:i])
		l.buf = l.buf[i+1:]
	}
	if len(l.buf) > maxLine {
		l.emit(l.buf)
		l.buf = l.buf[:0]
	}
	return len(p), nil
}

// Flush logs a last line that had no newline.
func (l *Logger) Flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buf) > 0 {
		l.emit(l.buf)
		l.buf = nil
	}
}

func (l *Logger) emit(line []byte) {
	line = bytes.TrimRight(line, "\r")
	if len(line) == 0 {
		return
	}
	l.log.Info(string(line))
	if m := errorLine.FindSubmatch(line); m != nil && l.firstError == "" {
		l.firstError = string(m[2])
	}
}

// FileErrors counts the writes to the log file that failed.
func (l *Logger) FileErrors() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fileErrors
}

// FirstError returns the first error line the child printed since the last NewRun, "" if none.
func (l *Logger) FirstError() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.firstError
}

// NewRun forgets the errors of the previous run of the child.
func (l *Logger) NewRun() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.firstError = ""
}
