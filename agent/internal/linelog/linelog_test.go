package linelog

import (
	"bytes"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
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
