package main

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
)

// run runs the command line as main does and returns its exit code and what it printed.
func run(args ...string) (int, string) {
	app := newApp()
	var out bytes.Buffer
	app.Writer, app.ErrWriter = &out, &out
	err := app.Run(append([]string{"llm-agent"}, args...))
	if err == nil {
		return 0, out.String()
	}
	return exitCode(err), out.String() + err.Error()
}

// TestClientCommandsBadInput: what the user must fix exits 2 with a message that says what.
func TestClientCommandsBadInput(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"bench", "--url", "http://127.0.0.1:1/v1", "--goodput", "ttft:fast"}, `--goodput "ttft:fast": give NAME:MILLISECONDS`},
		{[]string{"bench", "--url", "http://127.0.0.1:1/v1", "--goodput", "itl:5"}, "the targets are ttft, tpot and e2el"},
		{[]string{"bench", "--url", "http://127.0.0.1:1/v1", "--request-rate", "0"}, "--request-rate"},
		{[]string{"bench", "--url", "127.0.0.1:8000"}, "give the API's base URL"},
		{[]string{"bench", "--url", "http://127.0.0.1:1/v1", "12"}, "a job or --url, not both"},
		{[]string{"bench", "424242"}, `no connection file for "424242"`},
		{[]string{"bench", "--url", "http://127.0.0.1:1/v1"}, "cannot reach http://127.0.0.1:1/v1"},
		{[]string{"bench", "424242", "--url", "x"}, "options go before the job"},
		{[]string{"bench", "--url", "http://127.0.0.1:1/v1", "--api-key-file", "/nonexistent"}, "API key"},
		{[]string{"tunnel", "424242"}, "no job 424242 on this host"},
		{[]string{"tunnel", "--key-file", "k", "1"}, "give --fetch-key too"},
		{[]string{"tunnel", "--interval", "1ms", "1"}, "too short"},
		{[]string{"tunnel", "--login", "me@login", "--ssh", "/no/such/ssh", "1"}, "is not installed"},
		{[]string{"tunnel", "1", "2"}, "tunnel takes one job, not 2 arguments"},
	} {
		code, out := run(tc.args...)
		assert.Equal(t, 2, code, "%v: %s", tc.args, out)
		assert.Contains(t, out, tc.want, "%v", tc.args)
	}
}

func TestClientHelp(t *testing.T) {
	for _, cmd := range []string{"tunnel", "bench"} {
		code, out := run(cmd, "--help")
		assert.Equal(t, 0, code)
		assert.Contains(t, out, "USAGE:\n   llm-agent "+cmd+" [")
	}
}
