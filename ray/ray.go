// Package ray builds the `ray start` command lines of a job, with its token authentication,
// and asks the Ray GCS which nodes are alive. It knows nothing of vLLM, Slurm or the agent's
// files.
package ray

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// StartOptions are the settings of one node's `ray start`.
type StartOptions struct {
	// Head starts the head; otherwise the node joins GCSAddress.
	Head bool
	// NodeAddress is this node's IP address.
	NodeAddress string
	// GCSAddress is the head's HOST:PORT, for workers.
	GCSAddress string
	// GCSPort is the head's GCS port.
	GCSPort int
	// DashboardPort and ClientPort are head-only ports.
	DashboardPort, ClientPort int
	// Per-node ports.
	NodeManagerPort, ObjectManagerPort     int
	DashboardAgentPort, DashboardAgentGRPC int
	MetricsExportPort, RuntimeEnvAgentPort int
	MinWorkerPort, MaxWorkerPort           int
	// NumGPUs and NumCPUs are the node's resources in the job; NumCPUs 0 lets Ray count them.
	NumGPUs, NumCPUs int
	// TempDir is the node's temporary directory, which Ray 2.60 takes per node: a private
	// directory, never the shared /tmp/ray.
	TempDir string
	// IncludeDashboard starts the dashboard on the head, on loopback only.
	IncludeDashboard bool
}

// StartArgs returns the arguments of `ray start` (without the executable) for o. Every port
// is given explicitly, so jobs that share a node never collide.
func StartArgs(o StartOptions) []string {
	args := []string{"start", "--block", "--disable-usage-stats", "--log-style", "record", "--log-color", "false",
		"--node-ip-address", o.NodeAddress}
	itoa := strconv.Itoa
	if o.Head {
		args = append(args, "--head",
			"--port", itoa(o.GCSPort),
			"--ray-client-server-port", itoa(o.ClientPort),
			"--include-dashboard", strconv.FormatBool(o.IncludeDashboard))
		if o.IncludeDashboard {
			// Loopback only: the owner reaches it through a tunnel, and the token guards it too.
			args = append(args, "--dashboard-host", "127.0.0.1", "--dashboard-port", itoa(o.DashboardPort))
		}
	} else {
		args = append(args, "--address", o.GCSAddress)
	}
	if o.TempDir != "" {
		args = append(args, "--temp-dir", o.TempDir)
	}
	args = append(args,
		"--node-manager-port", itoa(o.NodeManagerPort),
		"--object-manager-port", itoa(o.ObjectManagerPort),
		"--dashboard-agent-listen-port", itoa(o.DashboardAgentPort),
		"--dashboard-agent-grpc-port", itoa(o.DashboardAgentGRPC),
		"--metrics-export-port", itoa(o.MetricsExportPort),
		"--runtime-env-agent-port", itoa(o.RuntimeEnvAgentPort),
		"--min-worker-port", itoa(o.MinWorkerPort),
		"--max-worker-port", itoa(o.MaxWorkerPort),
		"--num-gpus", itoa(o.NumGPUs))
	if o.NumCPUs > 0 {
		args = append(args, "--num-cpus", itoa(o.NumCPUs))
	}
	return args
}

// Env returns the environment additions every Ray process of the node needs: Ray and vLLM must
// agree on the node's IP, and NCCL and Gloo must use the same interface.
func Env(nodeAddress, ifname string) []string {
	env := []string{
		"RAY_NODE_IP_ADDRESS=" + nodeAddress,
		"VLLM_HOST_IP=" + nodeAddress,
		"CUDA_DEVICE_ORDER=PCI_BUS_ID",
		"RAY_USAGE_STATS_ENABLED=0",
	}
	if ifname != "" {
		env = append(env, "NCCL_SOCKET_IFNAME="+ifname, "GLOO_SOCKET_IFNAME="+ifname)
	}
	return env
}

// authVars are the variables through which Ray finds its authentication mode and token.
var authVars = []string{"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}

// WithAuth returns env with Ray's token authentication on and the token read from tokenFile.
// Any authentication setting env already had is dropped first, so that a token from the user's
// environment cannot take the job's place. The token itself never appears in an argument or in
// the environment: Ray reads it from the file.
func WithAuth(env []string, tokenFile string) []string {
	out := make([]string, 0, len(env)+2)
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(authVars, k) {
			out = append(out, kv)
		}
	}
	return append(out, "RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN_PATH="+tokenFile)
}

// Node is one node as the GCS knows it.
type Node struct {
	ID       string `json:"node_id"`
	Address  string `json:"address"`
	Hostname string `json:"hostname"`
	Alive    bool   `json:"alive"`
	Head     bool   `json:"head"`
}

//go:embed nodes.py
var nodesScript []byte

// ErrUnreachable is returned when the GCS does not accept connections.
var ErrUnreachable = errors.New("ray GCS unreachable")

// Client asks a Ray cluster's GCS about its nodes, through the Python of the Ray installation.
type Client struct {
	// Python is the interpreter that has ray installed.
	Python string
	// GCSAddress is HOST:PORT of the head's GCS.
	GCSAddress string
	// Timeout bounds one query.
	Timeout time.Duration
	// TokenFile holds the cluster's authentication token; empty queries without one.
	TokenFile string
}

// PythonFor returns the interpreter of the environment that rayBin belongs to, read from the
// script's #! line, falling back to python3 next to it.
func PythonFor(rayBin string) (string, error) {
	path, err := exec.LookPath(rayBin)
	if err != nil {
		return "", fmt.Errorf("find ray executable %q: %w", rayBin, err)
	}
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	line, _ := bufio.NewReader(f).ReadString('\n')
	if strings.HasPrefix(line, "#!") {
		fields := strings.Fields(strings.TrimPrefix(line, "#!"))
		if len(fields) == 1 && filepath.IsAbs(fields[0]) {
			return fields[0], nil
		}
		if len(fields) == 2 && filepath.Base(fields[0]) == "env" {
			return exec.LookPath(fields[1])
		}
	}
	sibling := filepath.Join(filepath.Dir(path), "python3")
	if _, err := os.Stat(sibling); err == nil {
		return sibling, nil
	}
	return "", fmt.Errorf("find the Python of %s: no #! line and no python3 beside it", path)
}

// Nodes returns every node the GCS knows, alive or dead.
func (c Client) Nodes(ctx context.Context) ([]Node, error) {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// The GCS client waits half a minute for a GCS that is not there; a plain dial fails fast.
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", c.GCSAddress)
	if err != nil {
		return nil, fmt.Errorf("%w at %s: %w", ErrUnreachable, c.GCSAddress, err)
	}
	conn.Close()
	cmd := exec.CommandContext(ctx, c.Python, "-c", string(nodesScript), c.GCSAddress,
		strconv.FormatFloat(timeout.Seconds(), 'f', 1, 64))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Env = append(os.Environ(), "RAY_USAGE_STATS_ENABLED=0")
	if c.TokenFile != "" {
		cmd.Env = WithAuth(cmd.Env, c.TokenFile)
	}
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("list ray nodes at %s: %w: %s", c.GCSAddress, err, lastLine(stderr.String()))
	}
	return ParseNodes(out)
}

// ParseNodes parses the helper's JSON output.
func ParseNodes(out []byte) ([]Node, error) {
	var nodes []Node
	if err := json.Unmarshal(out, &nodes); err != nil {
		return nil, fmt.Errorf("parse ray node list: %w", err)
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Hostname < nodes[j].Hostname })
	return nodes, nil
}

// Alive returns the nodes that are alive.
func Alive(nodes []Node) []Node {
	var out []Node
	for _, n := range nodes {
		if n.Alive {
			out = append(out, n)
		}
	}
	return out
}

// Missing returns the expected hosts that have no alive node, matched by host name (short or
// full: Slurm and the node may disagree on the domain) or address.
func Missing(nodes []Node, hosts, addresses []string) []string {
	have := map[string]bool{}
	for _, n := range Alive(nodes) {
		short, _, _ := strings.Cut(n.Hostname, ".")
		have[n.Hostname] = true
		have[short] = true
		have[n.Address] = true
	}
	var out []string
	for i, h := range hosts {
		short, _, _ := strings.Cut(h, ".")
		if have[h] || have[short] || (i < len(addresses) && addresses[i] != "" && have[addresses[i]]) {
			continue
		}
		out = append(out, h)
	}
	return out
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
