package tunnel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// TestMain lets the test binary play ssh (see fakeSSH) when a test runs it as such.
func TestMain(m *testing.M) {
	if os.Getenv("FAKE_SSH") == "1" {
		os.Exit(fakeSSH(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// fakeSSH is a stand-in for the OpenSSH client, for the unit tests only (the end-to-end suite
// runs the real client against a real sshd): it runs a remote command with sh in
// $FAKE_SSH_HOME, and serves -L SOCKET:HOST:PORT by dialling HOST:PORT itself. As master
// (ControlMaster=yes) it takes -O forward and -O cancel on its ControlPath. The login host
// "unreachable" fails as ssh does, with 255.
func fakeSSH(args []string) int {
	var forward, login, control, op string
	master := false
	var remote []string
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "-o":
			i++
			if p, ok := strings.CutPrefix(args[i], "ControlPath="); ok {
				control = p
			}
			master = master || args[i] == "ControlMaster=yes"
		case "-O":
			i++
			op = args[i]
		case "-L":
			i++
			forward = args[i]
		case "-N":
		case "--":
			login, remote = args[i+1], args[i+2:]
			i = len(args)
		}
	}
	if strings.HasSuffix(login, "unreachable") {
		fmt.Fprintln(os.Stderr, "ssh: connect to host unreachable port 22: Connection refused")
		return 255
	}
	if len(remote) > 0 {
		fmt.Println("Welcome to the login host. Quota: 12 of 50 GiB.") // what a chatty login shell prints first
		cmd := exec.Command("sh", "-c", strings.Join(remote, " "))
		cmd.Dir = os.Getenv("FAKE_SSH_HOME")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return 1
		}
		return 0
	}
	if op != "" {
		c, err := net.Dial("unix", control)
		if err != nil {
			fmt.Fprintln(os.Stderr, "Control socket connect:", err)
			return 255
		}
		defer c.Close()
		fmt.Fprintf(c, "%s %s\n", op, forward)
		b := make([]byte, 1)
		c.Read(b) // the master's word that it is done
		return 0
	}
	if pids := os.Getenv("FAKE_SSH_PIDS"); pids != "" {
		os.WriteFile(filepath.Join(pids, strconv.Itoa(os.Getpid())), nil, 0o600)
	}
	if master && control != "" {
		go fakeMaster(control)
	}
	return fakeForward(forward)
}

// fakeMaster takes -O forward and -O cancel requests on the control socket.
func fakeMaster(control string) {
	os.Remove(control)
	ln, err := net.Listen("unix", control)
	if err != nil {
		return
	}
	var mu sync.Mutex
	forwards := map[string]net.Listener{}
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		line, _ := bufio.NewReader(c).ReadString('\n')
		op, spec, _ := strings.Cut(strings.TrimSpace(line), " ")
		sock, target, _ := strings.Cut(spec, ":")
		mu.Lock()
		switch op {
		case "forward":
			if fl, err := net.Listen("unix", sock); err == nil {
				forwards[sock] = fl
				go serveForward(fl, target)
			}
		case "cancel":
			if fl := forwards[sock]; fl != nil {
				fl.Close()
			}
		}
		mu.Unlock()
		c.Write([]byte{'\n'})
		c.Close()
	}
}

func fakeForward(forward string) int {
	sock, target, _ := strings.Cut(forward, ":")
	os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bind:", err)
		return 255
	}
	serveForward(ln, target)
	return 255
}

func serveForward(ln net.Listener, target string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			up, err := net.Dial("tcp", target)
			if err != nil {
				return
			}
			defer up.Close()
			splice(c, up)
		}()
	}
}

// syncBuffer is the tunnel's output, read while it is written.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor waits for s to appear after offset in the output; it returns the offset after it.
func (s *syncBuffer) waitFor(t *testing.T, offset int, want string) int {
	t.Helper()
	var at int
	require.Eventually(t, func() bool {
		out := s.String()
		i := strings.Index(out[min(offset, len(out)):], want)
		at = offset + i + len(want)
		return i >= 0
	}, 20*time.Second, 10*time.Millisecond, "no %q in the output:\n%s", want, s.String())
	return at
}

// head is a stand-in for the job's gateway.
func head(t *testing.T, name string) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" {
			w.Write([]byte("ready\n"))
			return
		}
		fmt.Fprintf(w, "%s %s", name, r.URL.Path)
	}))
	t.Cleanup(s.Close)
	return s
}

// job writes a connection file under home for a job served by srv.
type job struct {
	t    *testing.T
	home string
	dir  string
	conn jobfiles.Connection
}

func newJob(t *testing.T, home, id string, srv *httptest.Server) *job {
	dir := filepath.Join(home, jobfiles.JobsDir, id)
	require.NoError(t, os.MkdirAll(dir, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "api_key"), []byte("sk-secret-key\n"), 0o600))
	j := &job{t: t, home: home, dir: dir, conn: jobfiles.Connection{JobID: id, State: jobfiles.StateReady, ServedModelName: "tiny",
		APIKeyFile: filepath.Join(dir, "api_key")}}
	j.point(srv)
	return j
}

func (j *job) point(srv *httptest.Server) {
	host, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	j.conn.HeadHost, j.conn.HeadAddress = "node1", host
	j.conn.Port, _ = strconv.Atoi(port)
	j.write()
}

func (j *job) setState(s jobfiles.ServiceState, reason string) {
	j.conn.State, j.conn.Reason = s, reason
	j.write()
}

func (j *job) write() {
	require.NoError(j.t, jobfiles.WriteJSONAtomic(filepath.Join(j.dir, jobfiles.ConnectionFile), j.conn, 0o600))
}

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func get(t *testing.T, port int, path string) (string, error) {
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// fakeSSHProgram writes an ssh that runs this test binary as fakeSSH.
func fakeSSHProgram(t *testing.T, home, pids string) string {
	self, err := os.Executable()
	require.NoError(t, err)
	p := filepath.Join(t.TempDir(), "ssh")
	script := fmt.Sprintf("#!/bin/sh\nFAKE_SSH=1 FAKE_SSH_HOME=%q FAKE_SSH_PIDS=%q exec %q \"$@\"\n", home, pids, self)
	require.NoError(t, os.WriteFile(p, []byte(script), 0o755))
	return p
}

type running struct {
	out    *syncBuffer
	port   int
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, o Options) *running {
	r := &running{out: &syncBuffer{}, port: o.LocalPort, done: make(chan error, 1)}
	o.Out = r.out
	if o.Interval == 0 {
		o.Interval = 50 * time.Millisecond
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- Run(ctx, o) }()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	return r
}

func (r *running) wait(t *testing.T) error {
	select {
	case err := <-r.done:
		r.done <- err
		return err
	case <-time.After(20 * time.Second):
		t.Fatalf("the tunnel did not end; output:\n%s", r.out.String())
		return nil
	}
}

// TestLocalTunnel runs on the login host itself: it forwards, follows the head when it moves,
// and ends when the job stops.
func TestLocalTunnel(t *testing.T) {
	home := t.TempDir()
	a, b := head(t, "a"), head(t, "b")
	j := newJob(t, home, "77", a)
	port := freePort(t)
	r := start(t, Options{Job: "77", Home: home, LocalPort: port})
	at := r.out.waitFor(t, 0, "export OPENAI_BASE_URL=http://127.0.0.1:"+strconv.Itoa(port)+"/v1")
	r.out.waitFor(t, 0, "the API key is in "+j.conn.APIKeyFile+" on this host; --fetch-key copies it")
	at = r.out.waitFor(t, at, "ready")
	body, err := get(t, port, "/v1/models")
	require.NoError(t, err)
	assert.Equal(t, "a /v1/models", body)

	// The job's head moves: the same local port now reaches the new one.
	j.point(b)
	a.Close()
	at = r.out.waitFor(t, at, "moving")
	r.out.waitFor(t, at, "ready")
	body, err = get(t, port, "/v1/models")
	require.NoError(t, err)
	assert.Equal(t, "b /v1/models", body)

	j.setState(jobfiles.StateRestarting, "engine exited 1")
	b.Close()
	r.out.waitFor(t, at, "restarting")
	j.setState(jobfiles.StateStopped, "time limit")
	require.NoError(t, r.wait(t))
	assert.Contains(t, r.out.String(), "job 77 has ended (stopped: time limit); the tunnel is closed")
	assert.NotContains(t, r.out.String(), "sk-secret-key")
}

// TestSSHTunnel goes through a login host with ssh: it fetches the key on request, reconnects
// when ssh drops, and returns ErrJobFailed when the job fails.
func TestSSHTunnel(t *testing.T) {
	home, pids := t.TempDir(), t.TempDir()
	a, b := head(t, "a"), head(t, "b")
	j := newJob(t, home, "78", a)
	port := freePort(t)
	keyDir := filepath.Join(t.TempDir(), "keys")
	require.NoError(t, os.Mkdir(keyDir, 0o700))
	keyFile := filepath.Join(keyDir, "k")
	r := start(t, Options{Job: "78", Login: "me@login", SSH: fakeSSHProgram(t, home, pids), SSHOptions: []string{"IdentityFile=x"},
		LocalPort: port, FetchKey: true, KeyFile: keyFile, Home: t.TempDir()})
	r.out.waitFor(t, 0, "llm-agent tunnel: job 78 (model tiny) on "+j.conn.HeadAddress+":"+strconv.Itoa(j.conn.Port)+" via me@login")
	r.out.waitFor(t, 0, "export OPENAI_API_KEY=$(cat "+keyFile+")")
	at := r.out.waitFor(t, 0, "ready")
	key, err := os.ReadFile(keyFile)
	require.NoError(t, err)
	assert.Equal(t, "sk-secret-key\n", string(key))
	fi, err := os.Stat(keyFile)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	body, err := get(t, port, "/v1/models")
	require.NoError(t, err)
	assert.Equal(t, "a /v1/models", body)

	// ssh drops: the tunnel says so and reconnects on the same port.
	entries, err := os.ReadDir(pids)
	require.NoError(t, err)
	require.Len(t, entries, 1)
	pid, _ := strconv.Atoi(entries[0].Name())
	p, err := os.FindProcess(pid)
	require.NoError(t, err)
	require.NoError(t, p.Kill())
	at = r.out.waitFor(t, at, "reconnecting")
	at = r.out.waitFor(t, at, "ready")
	body, err = get(t, port, "/v1/models")
	require.NoError(t, err)
	assert.Equal(t, "a /v1/models", body)

	// The head moves (a requeued job): ssh forwards to the new one, on the same local port.
	j.point(b)
	a.Close()
	at = r.out.waitFor(t, at, "moving")
	at = r.out.waitFor(t, at, "ready")
	body, err = get(t, port, "/v1/models")
	require.NoError(t, err)
	assert.Equal(t, "b /v1/models", body)

	j.setState(jobfiles.StateFailed, "engine crashed 5 times")
	require.ErrorIs(t, r.wait(t), ErrJobFailed)
	assert.NotContains(t, r.out.String(), "sk-secret-key")
}

// TestDefaultKeyFile puts the key under ~/.llm-agent/keys, in directories of mode 0700.
func TestDefaultKeyFile(t *testing.T) {
	home, local := t.TempDir(), t.TempDir()
	newJob(t, home, "79", head(t, "a"))
	r := start(t, Options{Job: "79", Login: "me@login", SSH: fakeSSHProgram(t, home, ""), LocalPort: freePort(t), FetchKey: true, Home: local})
	want := filepath.Join(local, ".llm-agent", "keys", "79")
	r.out.waitFor(t, 0, "export OPENAI_API_KEY=$(cat "+want+")")
	fi, err := os.Stat(filepath.Dir(want))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm())
	r.cancel()
	require.NoError(t, r.wait(t), "Ctrl-C ends it cleanly")
	assert.Contains(t, r.out.String(), "tunnel closed")
}

// TestBadInput: what the user must fix is ErrInput (exit 2), with a message that says what.
func TestBadInput(t *testing.T) {
	home := t.TempDir()
	srv := head(t, "a")
	newJob(t, home, "80", srv)
	ended := newJob(t, home, "81", srv)
	ended.setState(jobfiles.StateStopped, "time limit")
	require.NoError(t, os.MkdirAll(filepath.Join(home, jobfiles.JobsDir, "82"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(home, jobfiles.JobsDir, "82", jobfiles.ConnectionFile), []byte("{not json"), 0o600))
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	open := t.TempDir()
	require.NoError(t, os.Chmod(open, 0o777))
	ssh := fakeSSHProgram(t, home, "")
	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"no job", Options{}, "give a job id"},
		{"job and service", Options{Job: "1", Service: "s"}, "not both"},
		{"bad service", Options{Service: "a b"}, "service name"},
		{"bad job", Options{Job: "1;rm"}, "neither a job id nor a path"},
		{"unknown job", Options{Job: "99"}, "no job 99 on this host"},
		{"unknown service", Options{Service: "chat"}, "no service chat on this host: .llm-agent/services/chat/connection.json"},
		{"unknown job over ssh", Options{Job: "99", Login: "me@login", SSH: ssh}, "no job 99 on me@login"},
		{"unreachable login", Options{Job: "80", Login: "me@unreachable", SSH: ssh}, "cannot reach the login host me@unreachable"},
		{"no ssh", Options{Job: "80", Login: "me@login", SSH: "/no/such/ssh"}, "not installed"},
		{"ended", Options{Job: "81"}, "job 81 has already ended (stopped: time limit)"},
		{"not a connection file", Options{Job: "82"}, "is not a connection file"},
		{"bad port", Options{Job: "80", LocalPort: 70000}, "not a port"},
		{"busy port", Options{Job: "80", LocalPort: busy.Addr().(*net.TCPAddr).Port}, "choose another with --local-port"},
		{"open key dir", Options{Job: "80", FetchKey: true, KeyFile: filepath.Join(open, "k"), LocalPort: freePort(t)}, "other users could write to it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.Home = home
			tc.o.Out = io.Discard
			err := Run(context.Background(), tc.o)
			require.ErrorIs(t, err, ErrInput)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestConnectionPath(t *testing.T) {
	for _, tc := range []struct{ job, service, want string }{
		{"123", "", ".llm-agent/jobs/123/connection.json"},
		{"/scratch/me/state", "", "/scratch/me/state/connection.json"},
		{"/scratch/me/state/connection.json", "", "/scratch/me/state/connection.json"},
		{"", "chat", ".llm-agent/services/chat/connection.json"},
	} {
		got, err := connectionPath(tc.job, tc.service)
		require.NoError(t, err)
		assert.Equal(t, tc.want, got)
	}
	assert.Equal(t, `'it'\''s'`, shellQuote("it's"))
}

func TestBackoff(t *testing.T) {
	for attempt := 0; attempt < 10; attempt++ {
		d := backoff(attempt)
		full := min(backoffMin<<min(attempt, 5), backoffMax)
		assert.GreaterOrEqual(t, d, full/2)
		assert.LessOrEqual(t, d, full)
	}
}

func TestStatusLineOnATerminal(t *testing.T) {
	var out syncBuffer
	tu := &Tunnel{o: Options{Out: &out, Terminal: true, Job: "5"}}
	tu.show("ready", jobfiles.Connection{JobID: "5"}, "")
	tu.show("ready", jobfiles.Connection{JobID: "5"}, "")
	tu.end("tunnel closed")
	s := out.String()
	assert.Equal(t, 3, strings.Count(s, "\r\033[K"), "the status line is redrawn in place: %q", s)
	assert.True(t, strings.HasSuffix(s, "tunnel closed\n"))
	assert.Equal(t, "service chat (job 5)", (&Tunnel{o: Options{Service: "chat"}}).name(jobfiles.Connection{JobID: "5"}))
	assert.True(t, errors.Is(fmt.Errorf("x: %w", ErrInput), ErrInput))
}

// TestEndsWithAnIdleClientConnection: a client's keep-alive connection left open does not hold
// the tunnel open after Ctrl-C.
func TestEndsWithAnIdleClientConnection(t *testing.T) {
	home := t.TempDir()
	newJob(t, home, "83", head(t, "a"))
	port := freePort(t)
	r := start(t, Options{Job: "83", Home: home, LocalPort: port})
	r.out.waitFor(t, 0, "ready")
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	require.NoError(t, err)
	defer c.Close()
	fmt.Fprint(c, "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
	buf := make([]byte, 512)
	_, err = c.Read(buf)
	require.NoError(t, err)
	r.cancel()
	require.NoError(t, r.wait(t))
}
