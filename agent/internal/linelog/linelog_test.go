package linelog

import (
	"bytes"
	"io"
	"strings"
	"syscall"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLineLogger(t *testing.T) {
	var file, log bytes.Buffer
	l := New(&file, hclog.New(&hclog.LoggerOptions{Output: &log, DisableTime: true}))
	l.Write([]byte("first line\nsecond "))
	l.Write([]byte("half\r\n\nthird"))
	assert.Equal(t, "first line\nsecond half\r\n\nthird", file.String(), "the file gets the bytes unchanged")
	assert.Equal(t, "[INFO]  first line\n[INFO]  second half\n", log.String())
	l.Flush()
	assert.Contains(t, log.String(), "[INFO]  third\n")
	log.Reset()
	l.Write(bytes.Repeat([]byte("x"), maxLine+1))
	assert.Contains(t, log.String(), "xxxx", "a line without newline is cut at maxLine")
}

func TestLineLoggerKeepsTheFirstErrorLine(t *testing.T) {
	var file bytes.Buffer
	l := New(&file, hclog.NewNullLogger())
	assert.Equal(t, "", l.FirstError())
	l.Write([]byte("WARNING: this can cause errors like `OSError: [Errno 24] Too many open files`\n"))
	assert.Equal(t, "", l.FirstError(), "an error quoted in a warning is no error")
	l.Write([]byte("(EngineCore pid=1) ERROR 11-26 [core.py:1] ValueError: current platform cpu does not support ray.\n"))
	l.Write([]byte("Traceback (most recent call last):\n  File \"x.py\", line 1\nRuntimeError: Engine core initialization failed.\n"))
	assert.Equal(t, "ValueError: current platform cpu does not support ray.", l.FirstError(), "the root cause comes first")
	l.NewRun()
	assert.Equal(t, "", l.FirstError())
	l.Write([]byte("KeyError: 'x'\n"))
	assert.Equal(t, "KeyError: 'x'", l.FirstError())
}

// failing is a log file on a full disk.
type failing struct{}

func (failing) Write([]byte) (int, error) { return 0, syscall.ENOSPC }

// TestFullDiskDoesNotStopTheChild: a log file that cannot be written does not stop the copy of
// the child's output (the child would block on its full pipe): every byte is taken, the lines
// still reach the agent's log and keep the engine's first error, and the failures are counted.
func TestFullDiskDoesNotStopTheChild(t *testing.T) {
	var logged bytes.Buffer
	l := New(failing{}, hclog.New(&hclog.LoggerOptions{Output: &logged}))
	p := []byte("loading\nValueError: no room for the KV cache\n")
	n, err := l.Write(p)
	require.NoError(t, err)
	assert.Equal(t, len(p), n)
	_, err = l.Write([]byte("more\n"))
	require.NoError(t, err)
	assert.Equal(t, 2, l.FileErrors())
	assert.Equal(t, "ValueError: no room for the KV cache", l.FirstError())
	assert.Contains(t, logged.String(), "loading")
	assert.Contains(t, logged.String(), "more")
	assert.Equal(t, 1, strings.Count(logged.String(), "cannot write the log file"), "said once")
}

// TestModuleQualifiedErrors: an error named with its module, as PyTorch's out of memory is,
// is the engine's first error too.
func TestModuleQualifiedErrors(t *testing.T) {
	l := New(io.Discard, hclog.NewNullLogger())
	l.Write([]byte("INFO loading weights\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.\nRuntimeError: later\n"))
	assert.Equal(t, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.", l.FirstError())
	l.NewRun()
	l.Write([]byte("WARNING see torch.cuda.OutOfMemoryError: in the docs\n"))
	assert.Empty(t, l.FirstError(), "one quoted inside a warning")
}
