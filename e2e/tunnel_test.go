//go:build e2e

package e2e

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// The login host and the laptop of the mini-cluster (e2e/cluster/common.sh).
const (
	loginNS      = "llmlogin"
	laptopNS     = "llmlaptop"
	loginOutside = "10.78.0.1"
)

// loginHost is a real OpenSSH server on the mini-cluster's login host, with keys made for one
// test and no passwords.
type loginHost struct {
	dir   string
	cmd   *exec.Cmd
	sshOs []string // the client's -o options for the tunnel
}

// startLoginHost starts sshd in the login host's namespace. Its files are under the
// mini-cluster's state directory: root's folders from / down, as sshd's StrictModes wants.
func startLoginHost(t *testing.T) *loginHost {
	t.Helper()
	if _, err := os.Stat("/run/netns/" + loginNS); err != nil {
		t.Fatalf("the mini-cluster has no login host (e2e/cluster/up.sh makes it): %v", err)
	}
	sshOpen := func() bool { return inLaptop("bash", "-c", "exec 3<>/dev/tcp/"+loginOutside+"/22").Run() == nil }
	require.False(t, sshOpen(), "something already listens on the login host's port 22 (a sshd left by a killed run? e2e/cluster/down.sh ends it)")
	dir, err := os.MkdirTemp("/var/lib/llm-agent-minicluster", "login-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	for _, k := range []string{"host", "user"} {
		out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", k, "-f", filepath.Join(dir, k)).CombinedOutput()
		require.NoError(t, err, "ssh-keygen: %s", out)
	}
	pub := func(k string) string {
		b, err := os.ReadFile(filepath.Join(dir, k+".pub"))
		require.NoError(t, err)
		return strings.TrimSpace(string(b))
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "authorized_keys"), []byte(pub("user")+"\n"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "known_hosts"), []byte(loginOutside+" "+pub("host")+"\n"), 0o600))
	conf := strings.Join([]string{
		"Port 22",
		"HostKey " + filepath.Join(dir, "host"),
		"AuthorizedKeysFile " + filepath.Join(dir, "authorized_keys"),
		"PidFile " + filepath.Join(dir, "sshd.pid"),
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"PermitRootLogin prohibit-password",
		"UsePAM no",
		"AllowTcpForwarding yes",
		"AllowStreamLocalForwarding yes",
		"LogLevel VERBOSE",
	}, "\n") + "\n"
	require.NoError(t, os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(conf), 0o600))
	require.NoError(t, os.MkdirAll("/run/sshd", 0o755)) // sshd's privilege separation directory
	l := &loginHost{dir: dir, sshOs: []string{
		"IdentityFile=" + filepath.Join(dir, "user"),
		"UserKnownHostsFile=" + filepath.Join(dir, "known_hosts"),
		"StrictHostKeyChecking=yes",
		"IdentitiesOnly=yes",
	}}
	log, err := os.Create(filepath.Join(dir, "sshd.log"))
	require.NoError(t, err)
	l.cmd = exec.Command("nsenter", "--net=/run/netns/"+loginNS, "/usr/sbin/sshd", "-D", "-e", "-f", filepath.Join(dir, "sshd_config"))
	l.cmd.Stdout, l.cmd.Stderr = log, log
	require.NoError(t, l.cmd.Start())
	t.Cleanup(func() {
		l.cmd.Process.Signal(syscall.SIGTERM)
		l.cmd.Wait()
		log.Close()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "sshd.log"))
			t.Logf("sshd log:\n%s", tail(string(b), 40))
		}
	})
	require.True(t, assertEventually(10*time.Second, sshOpen), "sshd does not answer on the login host")
	return l
}

// sessions are the pids of sshd's per-connection processes on the login host (not the
// listener).
func (l *loginHost) sessions(t *testing.T) []int {
	t.Helper()
	b, err := exec.Command("ip", "netns", "pids", loginNS).Output()
	require.NoError(t, err)
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		pid, _ := strconv.Atoi(f)
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if pid != l.cmd.Process.Pid && strings.HasPrefix(string(cmdline), "sshd: ") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// inLaptop runs a command on the laptop: its only network is the link to the login host.
func inLaptop(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=/run/netns/" + laptopNS, name}, args...)...)
}

// lines collects a process's output lines and waits for one.
type lines struct {
	mu   sync.Mutex
	all  []string
	more chan struct{}
}

func watchLines(r io.Reader) *lines {
	l := &lines{more: make(chan struct{}, 1)}
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			l.mu.Lock()
			l.all = append(l.all, sc.Text())
			l.mu.Unlock()
			select {
			case l.more <- struct{}{}:
			default:
			}
		}
	}()
	return l
}

func (l *lines) text() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.all, "\n")
}

// waitFor waits for a line, after the first `from` lines, that contains s; it returns the
// line's index.
func (l *lines) waitFor(t *testing.T, from int, s string, timeout time.Duration) int {
	t.Helper()
	deadline := time.After(timeout)
	for {
		l.mu.Lock()
		for i := from; i < len(l.all); i++ {
			if strings.Contains(l.all[i], s) {
				l.mu.Unlock()
				return i
			}
		}
		l.mu.Unlock()
		select {
		case <-l.more:
		case <-deadline:
			t.Fatalf("no line with %q within %s; output:\n%s", s, timeout, l.text())
		}
	}
}

// laptopChat sends a chat completion from the laptop through the tunnel's local port.
func laptopChat(t *testing.T, port int, keyFile, model string) (int, string) {
	t.Helper()
	return laptopChatWithin(t, port, keyFile, model, 20*time.Second)
}

// laptopChatWithin is laptopChat with curl's --max-time.
func laptopChatWithin(t *testing.T, port int, keyFile, model string, limit time.Duration) (int, string) {
	t.Helper()
	body := `{"model":"` + model + `","max_tokens":4,"messages":[{"role":"user","content":"hello"}]}`
	out, _ := inLaptop("sh", "-c", `curl -sS --max-time `+strconv.Itoa(int(limit.Seconds()))+` -o /dev/stderr -w '%{http_code}' -H "Authorization: Bearer $(cat "$1")" `+
		`-H 'Content-Type: application/json' -d "$2" "http://127.0.0.1:$3/v1/chat/completions" 2>&1`,
		"sh", keyFile, body, strconv.Itoa(port)).Output()
	s := string(out)
	if len(s) < 3 {
		return 0, s
	}
	code, _ := strconv.Atoi(s[len(s)-3:])
	return code, s[:len(s)-3]
}

// TestTunnelFromLaptop runs llm-agent tunnel on a laptop that reaches only the login host: it
// finds the job through ssh, forwards, survives a dropped ssh connection, and ends with the job.
func TestTunnelFromLaptop(t *testing.T) {
	login := startLoginHost(t)
	j := submit(t, jobSpec{script: "singlenode.sbatch", sbatch: []string{"--gpus-per-node=2", "--cpus-per-task=1"}, home: "/root"})
	t.Cleanup(func() { os.RemoveAll(j.stateDir) })
	c := j.waitState(jobfiles.StateReady, readyTimeout)

	// The laptop cannot reach the head itself.
	require.Error(t, inLaptop("curl", "-sS", "--max-time", "3", fmt.Sprintf("http://%s:%d/readyz", c.HeadAddress, c.Port)).Run())

	keyDir := filepath.Join(login.dir, "laptop")
	require.NoError(t, os.Mkdir(keyDir, 0o700))
	keyFile := filepath.Join(keyDir, "key")
	localPort := 18080
	args := []string{suite.agentBin, "tunnel", "--login", "root@" + loginOutside, "--local-port", strconv.Itoa(localPort),
		"--interval", "500ms", "--fetch-key", "--key-file", keyFile}
	for _, o := range login.sshOs {
		args = append(args, "--ssh-option", o)
	}
	tun := inLaptop(args[0], append(args[1:], j.id)...)
	pr, pw := io.Pipe()
	tun.Stdout, tun.Stderr = pw, pw
	out := watchLines(pr)
	require.NoError(t, tun.Start())
	exited := make(chan struct{})
	var exitErr error
	go func() {
		exitErr = tun.Wait()
		pw.Close()
		close(exited)
	}()
	t.Cleanup(func() {
		tun.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("tunnel output:\n%s", out.text())
		}
	})

	out.waitFor(t, 0, "export OPENAI_BASE_URL=http://127.0.0.1:18080/v1", 30*time.Second)
	out.waitFor(t, 0, "export OPENAI_API_KEY=$(cat "+keyFile+")", time.Second)
	ready := out.waitFor(t, 0, "ready", 30*time.Second)
	key, err := os.ReadFile(keyFile)
	require.NoError(t, err)
	fi, err := os.Stat(keyFile)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	assert.Equal(t, j.apiKey(c), strings.TrimSpace(string(key)))
	assert.NotContains(t, out.text(), strings.TrimSpace(string(key)), "the key is never printed")

	code, body := laptopChat(t, localPort, keyFile, c.ServedModelName)
	require.Equal(t, 200, code, body)
	assert.Contains(t, body, `"chat.completion"`)

	// Drop the ssh connection on the login host's side: the tunnel reconnects on the same port.
	sessions := login.sessions(t)
	require.NotEmpty(t, sessions)
	for _, pid := range sessions {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	down := out.waitFor(t, ready, "reconnecting", 30*time.Second)
	out.waitFor(t, down, "ready", 60*time.Second)
	code, body = laptopChat(t, localPort, keyFile, c.ServedModelName)
	require.Equal(t, 200, code, body)

	// The job ends: the tunnel says so and exits 0, leaving no ssh behind.
	require.NoError(t, exec.Command("scancel", j.id).Run())
	select {
	case <-exited:
		require.NoError(t, exitErr, "the tunnel exits 0 when the job stopped")
	case <-time.After(90 * time.Second):
		t.Fatalf("the tunnel did not end with the job")
	}
	assert.Regexp(t, `job `+j.id+` has ended \(stopped`, out.text())
	pids, err := exec.Command("ip", "netns", "pids", laptopNS).Output()
	require.NoError(t, err)
	assert.Empty(t, strings.TrimSpace(string(pids)), "nothing of the tunnel is left on the laptop")
}

// TestTunnelBadInput: an unknown job, an unreachable login host and a job that has ended get a
// clear message and exit 2.
func TestTunnelBadInput(t *testing.T) {
	login := startLoginHost(t)
	run := func(args ...string) (int, string) {
		full := []string{"tunnel"}
		for _, o := range login.sshOs {
			full = append(full, "--ssh-option", o)
		}
		out, err := inLaptop(suite.agentBin, append(full, args...)...).CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		return code, string(out)
	}
	code, out := run("--login", "root@"+loginOutside, "999999")
	assert.Equal(t, 2, code, out)
	assert.Contains(t, out, "no job 999999 on root@"+loginOutside)
	code, out = run("--login", "root@10.78.0.9", "--ssh-option", "ConnectTimeout=3", "1")
	assert.Equal(t, 2, code, out)
	assert.Contains(t, out, "cannot reach the login host root@10.78.0.9")
	code, out = run("--login", "root@"+loginOutside, "--local-port", "70000", "1")
	assert.Equal(t, 2, code, out)
	assert.Contains(t, out, "not a port")
}
