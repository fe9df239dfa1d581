package ray

import (
	"bytes"
	"context"
	"fmt"
	"net"
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
)

func TestStartArgs(t *testing.T) {
	base := StartOptions{NodeAddress: "10.0.0.1", GCSPort: 6379, DashboardPort: 8265, ClientPort: 10001,
		NodeManagerPort: 6500, ObjectManagerPort: 6600, DashboardAgentPort: 6700, DashboardAgentGRPC: 6800,
		MetricsExportPort: 6900, RuntimeEnvAgentPort: 7000, MinWorkerPort: 11000, MaxWorkerPort: 11199, NumGPUs: 4}
	tests := []struct {
		name string
		edit func(o *StartOptions)
		want string
	}{
		{"head", func(o *StartOptions) { o.Head, o.IncludeDashboard, o.TempDir, o.NumCPUs = true, true, "/tmp/j/ray", 16 },
			"start --block --disable-usage-stats --log-style record --log-color false --node-ip-address 10.0.0.1 --head --port 6379 " +
				"--ray-client-server-port 10001 --include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port 8265 --temp-dir /tmp/j/ray " +
				"--node-manager-port 6500 --object-manager-port 6600 --dashboard-agent-listen-port 6700 --dashboard-agent-grpc-port 6800 " +
				"--metrics-export-port 6900 --runtime-env-agent-port 7000 --min-worker-port 11000 --max-worker-port 11199 --num-gpus 4 --num-cpus 16"},
		{"head without dashboard", func(o *StartOptions) { o.Head = true },
			"start --block --disable-usage-stats --log-style record --log-color false --node-ip-address 10.0.0.1 --head --port 6379 " +
				"--ray-client-server-port 10001 --include-dashboard false " +
				"--node-manager-port 6500 --object-manager-port 6600 --dashboard-agent-listen-port 6700 --dashboard-agent-grpc-port 6800 " +
				"--metrics-export-port 6900 --runtime-env-agent-port 7000 --min-worker-port 11000 --max-worker-port 11199 --num-gpus 4"},
		{"worker", func(o *StartOptions) { o.GCSAddress = "10.0.0.9:6379"; o.TempDir = "/tmp/w/ray" },
			"start --block --disable-usage-stats --log-style record --log-color false --node-ip-address 10.0.0.1 --address 10.0.0.9:6379 " +
				"--temp-dir /tmp/w/ray " +
				"--node-manager-port 6500 --object-manager-port 6600 --dashboard-agent-listen-port 6700 --dashboard-agent-grpc-port 6800 " +
				"--metrics-export-port 6900 --runtime-env-agent-port 7000 --min-worker-port 11000 --max-worker-port 11199 --num-gpus 4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := base
			tt.edit(&o)
			assert.Equal(t, tt.want, strings.Join(StartArgs(o), " "))
		})
	}
}

func TestEnv(t *testing.T) {
	assert.Equal(t, []string{"RAY_NODE_IP_ADDRESS=10.0.0.1", "VLLM_HOST_IP=10.0.0.1", "CUDA_DEVICE_ORDER=PCI_BUS_ID",
		"RAY_USAGE_STATS_ENABLED=0", "NCCL_SOCKET_IFNAME=ib0", "GLOO_SOCKET_IFNAME=ib0"}, Env("10.0.0.1", "ib0"))
	assert.Len(t, Env("10.0.0.1", ""), 4)
}

func TestWithAuth(t *testing.T) {
	env := WithAuth([]string{"PATH=/bin", "RAY_AUTH_TOKEN=theirs", "RAY_AUTH_MODE=disabled", "RAY_AUTH_TOKEN_PATH=/x", "HOME=/h"}, "/s/ray_token")
	assert.Equal(t, []string{"PATH=/bin", "HOME=/h", "RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN_PATH=/s/ray_token"}, env)
}

func TestParseAndMatchNodes(t *testing.T) {
	nodes, err := ParseNodes([]byte(`[
		{"node_id":"b","address":"10.0.0.2","hostname":"gpu02.cluster","alive":true},
		{"node_id":"a","address":"10.0.0.1","hostname":"gpu01","alive":true,"head":true},
		{"node_id":"c","address":"10.0.0.3","hostname":"gpu03","alive":false}]`))
	require.NoError(t, err)
	require.Len(t, nodes, 3)
	assert.Equal(t, "a", nodes[0].ID, "sorted by host name")
	assert.Len(t, Alive(nodes), 2)
	assert.Equal(t, []string{"gpu03"}, Missing(nodes, []string{"gpu01", "gpu02", "gpu03"}, nil))
	assert.Empty(t, Missing(nodes, []string{"gpu01", "gpu02.cluster"}, nil))
	assert.Empty(t, Missing(nodes, []string{"x", "y"}, []string{"10.0.0.1", "10.0.0.2"}), "matched by address")
	_, err = ParseNodes([]byte("not json"))
	assert.Error(t, err)
}

func writeScript(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, []byte(body), 0o755))
	return p
}

func TestPythonFor(t *testing.T) {
	dir := t.TempDir()
	py := writeScript(t, dir, "python3", "#!/bin/sh\n")
	abs := writeScript(t, dir, "ray-abs", "#!"+py+"\nimport ray\n")
	got, err := PythonFor(abs)
	require.NoError(t, err)
	assert.Equal(t, py, got)

	sh, err := exec.LookPath("sh")
	require.NoError(t, err)
	env := writeScript(t, dir, "ray-env", "#!/usr/bin/env sh\n")
	got, err = PythonFor(env)
	require.NoError(t, err)
	assert.Equal(t, sh, got)

	binary := writeScript(t, dir, "ray-bin", "\x7fELF")
	got, err = PythonFor(binary)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(dir, "python3"), got, "python3 beside it")

	lone := t.TempDir()
	_, err = PythonFor(writeScript(t, lone, "ray", "\x7fELF"))
	assert.ErrorContains(t, err, "no #! line")
	_, err = PythonFor(filepath.Join(lone, "missing-ray"))
	assert.Error(t, err)
}

func TestClientNodes(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	dir := t.TempDir()
	py := writeScript(t, dir, "python", `#!/bin/sh
# fake interpreter: check the arguments the client passes, then answer like nodes.py
[ "$1" = "-c" ] || exit 9
case "$2" in *GcsClient*) ;; *) exit 8 ;; esac
echo '[{"node_id":"x","address":"127.0.0.1","hostname":"h","alive":true,"head":true}]'
`)
	c := Client{Python: py, GCSAddress: ln.Addr().String(), Timeout: 5 * time.Second}
	nodes, err := c.Nodes(context.Background())
	require.NoError(t, err)
	require.Len(t, nodes, 1)
	assert.True(t, nodes[0].Head)

	failing := writeScript(t, dir, "failing", "#!/bin/sh\necho 'Traceback...' >&2\necho 'RpcError: boom' >&2\nexit 1\n")
	_, err = Client{Python: failing, GCSAddress: ln.Addr().String()}.Nodes(context.Background())
	assert.ErrorContains(t, err, "RpcError: boom")

	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	_, err = Client{Python: py, GCSAddress: net.JoinHostPort("127.0.0.1", itoa(port)), Timeout: time.Second}.Nodes(context.Background())
	assert.ErrorIs(t, err, ErrUnreachable)
}

func itoa(i int) string { return strconv.Itoa(i) }

// realRayDeadline bounds a cold start of a real Ray head: on a loaded 2-core machine (the unit
// tests of every package run beside it under -race) the head has taken over a minute to list
// itself.
const realRayDeadline = 4 * time.Minute

// TestRealRay starts a real Ray head from the project's environment and lists its node through
// the GCS, when that environment exists (make venv; CI always has it).
func TestRealRay(t *testing.T) {
	venv := os.Getenv("LLM_AGENT_VENV")
	if venv == "" {
		venv = "../.venv"
	}
	rayBin := filepath.Join(venv, "bin", "ray")
	if _, err := os.Stat(rayBin); err != nil {
		t.Skip("no Ray environment at " + venv)
	}
	python, err := PythonFor(rayBin)
	require.NoError(t, err)
	// Ports the kernel calls free, distinct, and outside the worker range 45000-45099 that Ray
	// refuses to share with its other components.
	taken := map[int]bool{}
	free := func() int {
		for {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			p := l.Addr().(*net.TCPAddr).Port
			l.Close()
			if !taken[p] && (p < 45000 || p > 45099) {
				taken[p] = true
				return p
			}
		}
	}
	ports := make([]int, 9)
	for i := range ports {
		ports[i] = free()
	}
	addr := "127.0.0.1"
	tmp, err := os.MkdirTemp("/tmp", "rt-")
	require.NoError(t, err)
	defer os.RemoveAll(tmp)
	tokenFile := filepath.Join(t.TempDir(), "ray_token")
	require.NoError(t, os.WriteFile(tokenFile, []byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"), 0o600))
	opts := StartOptions{Head: true, NodeAddress: addr, GCSPort: ports[0], ClientPort: ports[1], NodeManagerPort: ports[2],
		ObjectManagerPort: ports[3], DashboardAgentPort: ports[4], DashboardAgentGRPC: ports[5], MetricsExportPort: ports[6],
		RuntimeEnvAgentPort: ports[7], MinWorkerPort: 45000, MaxWorkerPort: 45099, NumCPUs: 1, TempDir: tmp}
	cmd := exec.Command(rayBin, StartArgs(opts)...)
	cmd.Env = WithAuth(append(os.Environ(), Env(addr, "")...), tokenFile)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var headOut lockedBuffer
	cmd.Stdout, cmd.Stderr = &headOut, &headOut
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		killTree(tmp)
	}()
	c := Client{Python: python, GCSAddress: net.JoinHostPort(addr, itoa(ports[0])), Timeout: 20 * time.Second, TokenFile: tokenFile}
	ctx, cancel := context.WithTimeout(context.Background(), realRayDeadline)
	defer cancel()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		nodes, err := c.Nodes(ctx)
		if err == nil && len(Alive(nodes)) == 1 {
			assert.True(t, nodes[0].Head)
			assert.Len(t, nodes[0].ID, 56)
			// The same query without the token, or with another one, is refused.
			anon := c
			anon.TokenFile = ""
			_, err := anon.Nodes(ctx)
			require.Error(t, err, "the GCS answered a client without the token")
			assert.Contains(t, err.Error(), "Authentication")
			wrong := filepath.Join(t.TempDir(), "wrong")
			require.NoError(t, os.WriteFile(wrong, []byte("ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"), 0o600))
			anon.TokenFile = wrong
			_, err = anon.Nodes(ctx)
			require.Error(t, err, "the GCS answered a client with a wrong token")
			return
		}
		select {
		case werr := <-exited:
			exited <- werr
			t.Fatalf("ray start exited before the head listed itself (%v); its output:\n%s\n%s", werr, headOut.String(), headLogs(tmp))
		case <-ctx.Done():
			t.Fatalf("real ray head never listed itself within %s (last answer: %d nodes, %v); ray start's output:\n%s\n%s",
				realRayDeadline, len(nodes), err, headOut.String(), headLogs(tmp))
		case <-tick.C:
		}
	}
}

// lockedBuffer is an output buffer that the child's copier goroutine and the test share.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// headLogs returns the tails of the head's GCS and raylet logs under its temp dir.
func headLogs(tmp string) string {
	var sb strings.Builder
	for _, name := range []string{"gcs_server.out", "gcs_server.err", "raylet.out", "raylet.err"} {
		b, err := os.ReadFile(filepath.Join(tmp, "session_latest", "logs", name))
		if err != nil {
			continue
		}
		if len(b) > 4096 {
			b = b[len(b)-4096:]
		}
		fmt.Fprintf(&sb, "--- %s (tail)\n%s\n", name, b)
	}
	return sb.String()
}

// killTree kills what Ray daemonised out of our process group, found by its temp dir.
func killTree(tmp string) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), tmp) {
			var pid int
			for _, ch := range e.Name() {
				pid = pid*10 + int(ch-'0')
			}
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
