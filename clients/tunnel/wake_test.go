package tunnel

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// sleepingService writes a service whose job ended when it fell asleep, and the file that a
// wake leaves: the service served by a job at addr. It returns the path of that file.
func sleepingService(t *testing.T, home, goneAddr, addr string) string {
	dir := filepath.Join(home, ServicesDir, "svc")
	require.NoError(t, os.MkdirAll(dir, 0o700))
	file := func(state jobfiles.ServiceState, svc, reason, at string) jobfiles.ServiceFile {
		host, port, _ := strings.Cut(at, ":")
		p, _ := strconv.Atoi(port)
		return jobfiles.ServiceFile{Connection: jobfiles.Connection{JobID: "9", State: state, HeadHost: "node1", HeadAddress: host, Port: p,
			ServedModelName: "tiny"}, Service: jobfiles.ServiceInfo{Name: "svc", State: svc, Reason: reason}}
	}
	require.NoError(t, jobfiles.WriteJSONAtomic(filepath.Join(dir, jobfiles.ConnectionFile),
		file(jobfiles.StateStopped, "asleep", "no request for 30m0s", goneAddr), 0o600))
	woken := filepath.Join(home, "woken.json")
	require.NoError(t, jobfiles.WriteJSONAtomic(woken, file(jobfiles.StateReady, "serving", "", addr), 0o600))
	return woken
}

// wakeScript is the login host's llm-agent for these tests: it records its arguments, prints
// a wake's progress and, told to, leaves the woken service's file.
func wakeScript(t *testing.T, home string, serve bool) (script, args string) {
	args = filepath.Join(home, "wake-args")
	body := fmt.Sprintf("#!/bin/sh\necho \"$@\" >> %q\necho 'service svc: job 9 queued to wake it'\necho '12:00:00 queued: job 9 is pending (Resources)'\n", args)
	if serve {
		body += "cp woken.json .llm-agent/services/svc/connection.json\necho '12:00:04 serving'\n"
	} else {
		body += "echo 'llm-agent: the service does not serve after 1s' >&2\nexit 1\n"
	}
	script = filepath.Join(home, "llm-agent")
	require.NoError(t, os.WriteFile(script, []byte(body), 0o755))
	return script, args
}

// TestTunnelWakesASleepingService: through the login host, a tunnel to a sleeping service stays
// up; a request is held while the tunnel wakes the service (once, for all requests), shows the
// wake's progress, and is answered by the job that serves after.
func TestTunnelWakesASleepingService(t *testing.T) {
	home, pids := t.TempDir(), t.TempDir()
	old, b := head(t, "old"), head(t, "b")
	oldAddr := old.Listener.Addr().String()
	old.Close()
	sleepingService(t, home, oldAddr, b.Listener.Addr().String())
	agent, args := wakeScript(t, home, true)
	port := freePort(t)
	r := start(t, Options{Service: "svc", Login: "me@login", SSH: fakeSSHProgram(t, home, pids), LocalPort: port, Home: t.TempDir(),
		WakeTimeout: time.Minute, Agent: agent})
	at := r.out.waitFor(t, 0, "asleep")
	r.out.waitFor(t, at, "the next request wakes it")
	_, err := os.Stat(args)
	require.ErrorIs(t, err, os.ErrNotExist, "the tunnel's own probe does not wake the service; a request does")

	results := make(chan string, 2)
	for range 2 {
		go func() {
			body, err := get(t, port, "/v1/models")
			if err != nil {
				body = err.Error()
			}
			results <- body
		}()
	}
	for range 2 {
		assert.Equal(t, "b /v1/models", <-results, "held during the wake, then answered by the woken job")
	}
	out := r.out.String()
	assert.Contains(t, out, "waking")
	assert.Contains(t, out, "queued: job 9 is pending (Resources)")
	recorded, err := os.ReadFile(args)
	require.NoError(t, err)
	assert.Equal(t, "service wake --wait 60s --by llm-agent tunnel svc\n", string(recorded), "one wake for both requests")
}

// TestTunnelThatDoesNotWait: with --wake-timeout 0, or when the wake fails, a request to a
// sleeping service is answered 503 with Retry-After and the state.
func TestTunnelThatDoesNotWait(t *testing.T) {
	for _, tt := range []struct {
		name  string
		wait  time.Duration
		serve bool
		want  string
	}{
		{"no wait", 0, true, "service svc is asleep: no request for 30m0s"},
		{"failed wake", time.Minute, false, "the service did not wake: llm-agent: the service does not serve after 1s"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			home := t.TempDir()
			old := head(t, "old")
			oldAddr := old.Listener.Addr().String()
			old.Close()
			sleepingService(t, home, oldAddr, oldAddr)
			agent, args := wakeScript(t, home, tt.serve)
			port := freePort(t)
			r := start(t, Options{Service: "svc", Home: home, LocalPort: port, WakeTimeout: tt.wait, Agent: agent})
			r.out.waitFor(t, 0, "asleep")
			resp, err := http.Post("http://127.0.0.1:"+strconv.Itoa(port)+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"hi"}`))
			require.NoError(t, err)
			defer resp.Body.Close()
			assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
			assert.Equal(t, "30", resp.Header.Get("Retry-After"))
			b, _ := io.ReadAll(resp.Body)
			var e struct {
				Error struct{ Message, Type string }
			}
			require.NoError(t, json.Unmarshal(b, &e), "%s", b)
			assert.Equal(t, tt.want, e.Error.Message)
			assert.Equal(t, "service_asleep", e.Error.Type)
			_, err = os.Stat(args)
			assert.Equal(t, tt.wait > 0, err == nil, "a wake was run only when the tunnel waits")
		})
	}
}
