//go:build e2e || e2evllm || e2esecurity

// Package e2e runs the real sbatch scripts on the real mini-cluster (e2e/cluster/up.sh) with real
// Ray and the fakevllm test double, and checks what users and operators see.
package e2e

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/jobfiles"
)

const (
	readyTimeout = 2 * time.Minute
	drainBound   = 30 * time.Second // scancel to "no process left", as the issue asks
)

// suite holds what every test shares: binaries, the Python environment and a work directory on
// the filesystem all nodes see.
var suite struct {
	root     string // repository root
	work     string // shared work directory of this run
	agentBin string
	fakeBin  string
	venv     string
	nodes    int
}

func TestMain(m *testing.M) {
	if err := setup(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e setup:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func setup() error {
	wd, err := os.Getwd()
	if err != nil {
		return err
	}
	suite.root = filepath.Dir(wd)
	if out, err := exec.Command("sinfo", "-h", "-N", "-o", "%N %T").Output(); err != nil {
		return fmt.Errorf("the mini-cluster is not up (run make cluster-up): %w", err)
	} else {
		suite.nodes = len(strings.Split(strings.TrimSpace(string(out)), "\n"))
	}
	suite.venv = os.Getenv("LLM_AGENT_VENV")
	if suite.venv == "" {
		suite.venv = filepath.Join(suite.root, ".venv")
	}
	if _, err := os.Stat(filepath.Join(suite.venv, "bin", "ray")); err != nil {
		return fmt.Errorf("no ray in %s (run slurm-scripts/setup_environment.sh --venv %s): %w", suite.venv, suite.venv, err)
	}
	// Not under /tmp: every node has a /tmp of its own.
	base := "/var/tmp/llm-agent-e2e"
	if err := os.MkdirAll(base, 0o755); err != nil {
		return err
	}
	if suite.work, err = os.MkdirTemp(base, "run-"); err != nil {
		return err
	}
	// Jobs of ordinary users run the binaries built here.
	if err := os.Chmod(suite.work, 0o755); err != nil {
		return err
	}
	bin := filepath.Join(suite.work, "bin")
	suite.agentBin = filepath.Join(bin, "llm-agent")
	suite.fakeBin = filepath.Join(bin, "fakevllm")
	for out, pkg := range map[string]string{suite.agentBin: "./cmd/llm-agent", suite.fakeBin: "./e2e/fakevllm"} {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Dir = suite.root
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %w\n%s", pkg, err, b)
		}
	}
	return nil
}

// job is one submitted sbatch job.
type job struct {
	t        *testing.T
	id       string
	dir      string // the test's own shared directory
	stateDir string
	control  string // fakevllm's fault control file
	output   string
}

// jobSpec describes a submission.
type jobSpec struct {
	script string   // multinode.sbatch or singlenode.sbatch, or an absolute path (root only)
	sbatch []string // sbatch options, before the script
	agent  []string // llm-agent run options, after the script
	env    []string // extra environment
	// control is what fakevllm's control file holds from the start ("fail-start").
	control string
	// user submits the job (runuser); empty is root. The job's state directory is then in the
	// user's own home.
	user string
	// home is the home directory the job runs with (default: one of the test's own); its state
	// directory is under it.
	home string
	// noModel leaves out the --model of the test's own tiny model: agent names the models.
	noModel bool
	// fill, if set, writes the files of the test's own model, in the directory it is given.
	fill func(model string)
}

// submit sends the real sbatch script to the cluster with the test double as the engine.
func submit(t *testing.T, spec jobSpec) *job {
	t.Helper()
	dir, err := os.MkdirTemp(suite.work, strings.ReplaceAll(t.Name(), "/", "_")+"-")
	require.NoError(t, err)
	model := filepath.Join(dir, "models", "tiny-test")
	require.NoError(t, os.MkdirAll(model, 0o755))
	if spec.fill != nil {
		spec.fill(model)
	}
	j := &job{t: t, dir: dir, control: filepath.Join(dir, "control")}
	require.NoError(t, os.WriteFile(j.control, []byte(spec.control), 0o644))
	args := append([]string{"--parsable", "-o", filepath.Join(dir, "job-%j.out"), "-D", dir}, spec.sbatch...)
	home := filepath.Join(dir, "home")
	if spec.home != "" {
		home = spec.home
	}
	cmd := exec.Command("sbatch")
	if spec.user != "" {
		u, err := user.Lookup(spec.user)
		require.NoError(t, err, "the suite's users are made by e2e/cluster/users.sh")
		home = u.HomeDir
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		require.NoError(t, filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			return os.Chown(p, uid, gid)
		}))
		// sbatch reads the script as the user: give it a copy the user can read.
		script, err := os.ReadFile(filepath.Join(suite.root, "slurm-scripts", spec.script))
		require.NoError(t, err)
		spec.script = filepath.Join(dir, spec.script)
		require.NoError(t, os.WriteFile(spec.script, script, 0o755))
		cmd = exec.Command("runuser", "--preserve-environment", "-u", spec.user, "--", "sbatch")
	} else if !filepath.IsAbs(spec.script) {
		spec.script = filepath.Join(suite.root, "slurm-scripts", spec.script)
	}
	args = append(args, spec.script)
	if !spec.noModel {
		args = append(args, "--model", model)
	}
	args = append(args, spec.agent...)
	cmd.Args = append(cmd.Args, args...)
	cmd.Env = append(os.Environ(),
		"HOME="+home,
		"LLM_AGENT_VENV="+suite.venv,
		"LLM_AGENT_BIN="+suite.agentBin,
		"LLM_AGENT_VLLM_BIN="+suite.fakeBin,
		"LLM_AGENT_RAY_POLL_INTERVAL=1s",
		"LLM_AGENT_GRACE=10s",
		"LLM_AGENT_LOGIN_HOST=login.example",
		"FAKEVLLM_CONTROL="+j.control,
		"FAKEVLLM_TOKEN_DELAY=20ms",
	)
	cmd.Env = append(cmd.Env, spec.env...)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "sbatch: %s", out)
	j.id = strings.TrimSpace(string(out))
	j.stateDir = filepath.Join(home, ".llm-agent", "jobs", j.id)
	j.output = filepath.Join(dir, "job-"+j.id+".out")
	t.Logf("submitted job %s (%s %v)", j.id, spec.script, spec.agent)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(j.output)
			t.Logf("job %s output (last 60 lines):\n%s", j.id, tail(string(b), 60))
		}
		exec.Command("scancel", j.id).Run()
	})
	return j
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// conn reads the connection file; ok is false until it exists.
func (j *job) conn() (jobfiles.Connection, bool) {
	c, err := jobfiles.ReadConnection(filepath.Join(j.stateDir, jobfiles.ConnectionFile))
	return c, err == nil
}

// waitState waits for the connection file to show state, failing early on a terminal state
// that is not the one asked for.
func (j *job) waitState(state jobfiles.ServiceState, timeout time.Duration) jobfiles.Connection {
	j.t.Helper()
	var last jobfiles.Connection
	var ended string
	var asked time.Time
	ok := assertEventually(timeout, func() bool {
		c, ok := j.conn()
		if !ok {
			// No connection file yet: a job that Slurm has already ended will not write one.
			if time.Since(asked) > time.Second {
				asked = time.Now()
				if s := j.slurmState(); s != "" && s != "PENDING" && s != "RUNNING" && s != "CONFIGURING" && s != "COMPLETING" {
					ended = s
					return true
				}
			}
			return false
		}
		last = c
		if c.State != state && (c.State == jobfiles.StateFailed || c.State == jobfiles.StateStopped) {
			ended = string(c.State)
			return true
		}
		return c.State == state
	})
	require.True(j.t, ok && ended == "", "job %s never reached %s in %s; last state %q (%s); ended: %q", j.id, state, timeout, last.State, last.Reason, ended)
	return last
}

// slurmState returns the job's state as Slurm reports it.
func (j *job) slurmState() string {
	out, err := exec.Command("scontrol", "show", "job", "-o", j.id).Output()
	if err != nil {
		return ""
	}
	m := regexp.MustCompile(`JobState=(\S+)`).FindSubmatch(out)
	if m == nil {
		return ""
	}
	return string(m[1])
}

// waitEnded waits for Slurm to finish the job and returns its final state.
func (j *job) waitEnded(timeout time.Duration) string {
	j.t.Helper()
	var st string
	require.Eventually(j.t, func() bool {
		st = j.slurmState()
		switch st {
		case "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "":
			return false
		}
		return true
	}, timeout, 200*time.Millisecond, "job %s did not end; state %s", j.id, st)
	return st
}

// outputText returns the job's output file.
func (j *job) outputText() string {
	b, _ := os.ReadFile(j.output)
	return string(b)
}

// apiKey reads the key from the file the connection file names.
func (j *job) apiKey(c jobfiles.Connection) string {
	b, err := os.ReadFile(c.APIKeyFile)
	require.NoError(j.t, err)
	return strings.TrimSpace(string(b))
}

// nodeProcesses lists the processes in each node's network namespace other than its slurmd,
// as "node: pid cmdline".
func nodeProcesses(t *testing.T) []string {
	t.Helper()
	var out []string
	for i := 1; i <= suite.nodes; i++ {
		ns := fmt.Sprintf("llmnode%d", i)
		b, err := exec.Command("ip", "netns", "pids", ns).Output()
		require.NoError(t, err)
		for _, pid := range strings.Fields(string(b)) {
			cmdline, err := os.ReadFile("/proc/" + pid + "/cmdline")
			if err != nil || len(cmdline) == 0 {
				continue // gone, or a zombie
			}
			cmd := strings.TrimSpace(strings.ReplaceAll(string(cmdline), "\x00", " "))
			if strings.HasPrefix(cmd, "slurmd ") {
				continue
			}
			out = append(out, fmt.Sprintf("node%d: %s %s", i, pid, cmd))
		}
	}
	return out
}

// requireNoProcesses waits until no process but slurmd is left on any node.
func requireNoProcesses(t *testing.T, timeout time.Duration) {
	t.Helper()
	var left []string
	ok := assertEventually(timeout, func() bool {
		left = nodeProcesses(t)
		return len(left) == 0
	})
	require.True(t, ok, "processes left on the nodes after %s:\n%s", timeout, strings.Join(left, "\n"))
}

// assertEventually polls cond until it holds or the timeout passes.
func assertEventually(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// inNamespace runs a command inside a node's network namespace.
func inNamespace(node int, name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=/run/netns/" + fmt.Sprintf("llmnode%d", node), name}, args...)...)
}

// onNode runs a shell command as if logged in on a node: in its network, UTS and mount
// namespaces (so with its own /tmp), as user ("" for root).
func onNode(node int, user, command string) *exec.Cmd {
	pidFile := fmt.Sprintf("/var/lib/llm-agent-minicluster/slurmd-node%d.pid", node)
	b, _ := os.ReadFile(pidFile)
	args := []string{"-t", strings.TrimSpace(string(b)), "--net", "--uts", "--mount"}
	if user != "" {
		args = append(args, "runuser", "-u", user, "--")
	}
	return exec.Command("nsenter", append(args, "sh", "-c", command)...)
}

// pidsByComm returns the pids in a node's namespace whose command name is comm.
// nodeNumber is the mini-cluster's number of host ("node2": 2): a job of one node runs on
// whichever node Slurm gives it.
func nodeNumber(t *testing.T, host string) int {
	t.Helper()
	n, err := strconv.Atoi(strings.TrimPrefix(host, "node"))
	require.NoError(t, err, "not a mini-cluster host: %q", host)
	return n
}

func pidsByComm(t *testing.T, node int, comm string) []string {
	t.Helper()
	b, err := exec.Command("ip", "netns", "pids", fmt.Sprintf("llmnode%d", node)).Output()
	require.NoError(t, err)
	var pids []string
	for _, pid := range strings.Fields(string(b)) {
		c, err := os.ReadFile("/proc/" + pid + "/comm")
		if err == nil && strings.TrimSpace(string(c)) == comm {
			pids = append(pids, pid)
		}
	}
	return pids
}

// chat sends one chat completion to base with key ("" for none) and returns status and body.
func chat(t *testing.T, base, key, model string, stream bool) (*http.Response, []byte) {
	t.Helper()
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"say something"}],"max_tokens":8,"stream":%v}`, model, stream)
	if stream {
		body = strings.TrimSuffix(body, "}") + `,"stream_options":{"include_usage":true}}`
	}
	req, err := http.NewRequest(http.MethodPost, base+"/chat/completions", strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	require.NoError(t, err)
	if stream {
		return resp, nil
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, b
}

// sseEvent is one "data:" line of a stream and when it arrived.
type sseEvent struct {
	data string
	at   time.Time
}

func readSSE(t *testing.T, r io.Reader) []sseEvent {
	t.Helper()
	var events []sseEvent
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "data: ") {
			events = append(events, sseEvent{data: strings.TrimPrefix(line, "data: "), at: time.Now()})
		}
	}
	require.NoError(t, sc.Err())
	return events
}

// metricsText fetches a metrics URL.
func metricsText(t *testing.T, url string) string {
	t.Helper()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, url)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}

// metricFloat returns the value of the sample whose line starts with prefix, as a number; a
// missing sample fails the test.
func metricFloat(t *testing.T, text, prefix string) float64 {
	t.Helper()
	v, ok := metricValue(text, prefix+" ")
	require.True(t, ok, "no sample %s", prefix)
	f, err := strconv.ParseFloat(v, 64)
	require.NoError(t, err, prefix)
	return f
}

// promtoolCheck runs `promtool check metrics` (Debian's prometheus package, which the CI
// installs) on an exposition and returns the problems it names, one per line.
func promtoolCheck(t *testing.T, text string) []string {
	t.Helper()
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	out, err := cmd.CombinedOutput()
	var problems []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line != "" {
			problems = append(problems, line)
		}
	}
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("promtool: %v (apt-get install prometheus)", err)
	}
	if err != nil {
		require.NotEmpty(t, problems, "promtool failed and said nothing")
	}
	return problems
}

// metricValue returns the value of the first sample whose line starts with prefix.
func metricValue(text, prefix string) (string, bool) {
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, prefix) {
			f := strings.Fields(line)
			return f[len(f)-1], true
		}
	}
	return "", false
}

func decodeJSON(t *testing.T, b []byte, v any) {
	t.Helper()
	require.NoError(t, json.NewDecoder(bytes.NewReader(b)).Decode(v), string(b))
}

func sha256hex(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// pidsByCmdline returns the pids in a node's namespace whose command line contains substr.
func pidsByCmdline(t *testing.T, node int, substr string) []string {
	t.Helper()
	b, err := exec.Command("ip", "netns", "pids", fmt.Sprintf("llmnode%d", node)).Output()
	require.NoError(t, err)
	var pids []string
	for _, pid := range strings.Fields(string(b)) {
		c, err := os.ReadFile("/proc/" + pid + "/cmdline")
		if err == nil && strings.Contains(string(c), substr) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// completion posts body to the job's API path with key and returns the status and body.
func completion(t *testing.T, c jobfiles.Connection, key, path, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, c.BaseURL+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 2 * time.Minute}).Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}
