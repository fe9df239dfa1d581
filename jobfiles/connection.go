package jobfiles

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// ServiceState is the state of the whole service as the connection file tells it.
type ServiceState string

// The service states, in the order a healthy job passes them.
const (
	StateStarting   ServiceState = "starting"
	StateReady      ServiceState = "ready"
	StateRestarting ServiceState = "restarting"
	StateStopping   ServiceState = "stopping"
	StateStopped    ServiceState = "stopped"
	StateFailed     ServiceState = "failed"
)

// Ended tells whether the job has ended: it will not serve again.
func (s ServiceState) Ended() bool { return s == StateStopped || s == StateFailed }

// Names of the files the head writes in the state directory.
const (
	ConnectionFile    = "connection.json"
	ConnectionEnvFile = "connection.env"
	APIKeyFile        = "api_key"
	// OwnerKeyFile holds the key of the job's owner, for the owner's own routes (LoRA adapters
	// at run time); no client key opens them.
	OwnerKeyFile = "owner_key"
)

// Replica is one replica of the engine, as the connection file lists it.
type Replica struct {
	Node string `json:"node"`
	// Model is the served name of the replica's model, in a job that serves several.
	Model string `json:"model,omitempty"`
	GPUs  int    `json:"gpus"`
	State string `json:"state"`
	// Restarts counts the restarts of the replica's engine; InFlight its requests now.
	Restarts int   `json:"restarts"`
	InFlight int64 `json:"in_flight"`
}

// ModelPlacement is one model of a job that serves several: its served name, what the engine
// loads, its replicas' nodes and each replica's GPUs, and whether it serves LoRA adapters.
type ModelPlacement struct {
	Name   string   `json:"name"`
	Model  string   `json:"model"`
	Nodes  []string `json:"nodes"`
	Tensor int      `json:"tensor_parallel_size,omitempty"`
	LoRA   bool     `json:"lora,omitempty"`
}

// Adapter is a LoRA adapter the engine serves, as the connection file lists it.
type Adapter struct {
	Name string `json:"name"`
	Path string `json:"path"`
}

// NodeEndpoint is one node's metrics endpoint in the connection file.
type NodeEndpoint struct {
	Node       string `json:"node"`
	Role       string `json:"role"`
	MetricsURL string `json:"metrics_url"`
	// EngineMetricsURL, on the head and on each worker that runs a replica, serves the node's
	// engine's own /metrics as the engine wrote it.
	EngineMetricsURL string `json:"engine_metrics_url,omitempty"`
}

// Connection is the content of connection.json: how to reach the service and how it is doing.
// It never holds the key itself, only where to find it.
type Connection struct {
	JobID       string       `json:"job_id"`
	State       ServiceState `json:"state"`
	Reason      string       `json:"reason,omitempty"`
	HeadHost    string       `json:"head_host"`
	HeadAddress string       `json:"head_address"`
	Port        int          `json:"port"`
	EnginePort  int          `json:"engine_port,omitempty"`
	// EngineSocket is the engine's Unix socket on the head, behind the gateway.
	EngineSocket     string `json:"engine_socket,omitempty"`
	BaseURL          string `json:"base_url"`
	Model            string `json:"model"`
	ServedModelName  string `json:"served_model_name"`
	TensorParallel   int    `json:"tensor_parallel_size"`
	PipelineParallel int    `json:"pipeline_parallel_size"`
	// Launcher is how the engine spans the nodes: "ray" or "mp" (no Ray; one rank per node).
	Launcher        string         `json:"launcher,omitempty"`
	Nodes           int            `json:"nodes"`
	GPUs            int            `json:"gpus"`
	APIKeyFile      string         `json:"api_key_file,omitempty"`
	KeysFile        string         `json:"keys_file,omitempty"`
	Gateway         bool           `json:"gateway"`
	EnvFile         string         `json:"env_file"`
	MetricsPort     int            `json:"metrics_port"`
	Metrics         []NodeEndpoint `json:"metrics"`
	RayAddress      string         `json:"ray_address,omitempty"`
	RayDashboardURL string         `json:"ray_dashboard_url,omitempty"`
	// RayDashboardTunnel forwards the head's loopback dashboard port to the owner's machine.
	RayDashboardTunnel string `json:"ray_dashboard_tunnel,omitempty"`
	// RayTokenFile holds the token every Ray client of the job must present.
	RayTokenFile string `json:"ray_token_file,omitempty"`
	// OwnerKeyFile holds the owner's key for `llm-agent lora`; set when the engine serves LoRA
	// adapters, which it may load and unload at run time up to LoRAMaxRank.
	OwnerKeyFile string    `json:"owner_key_file,omitempty"`
	LoRAMaxRank  int       `json:"lora_max_rank,omitempty"`
	Adapters     []Adapter `json:"adapters,omitempty"`
	// Replicas are the engine's replicas when the job runs several: each one's node, GPUs and
	// state as the head's gateway sees it ("ready" while it is in the rotation).
	Replicas []Replica `json:"replicas,omitempty"`
	// Models are the models of a job that serves several (or one from a models file); Model
	// and ServedModelName are then the head's.
	Models []ModelPlacement `json:"models,omitempty"`
	// ModelPrep is how the head's preparation of the model stands (verification or staging),
	// while it runs and after.
	ModelPrep *ModelPrep `json:"model_prep,omitempty"`
	SSHTunnel string     `json:"ssh_tunnel"`
	// Tunnel is the llm-agent tunnel command to run on a laptop for this job.
	Tunnel     string         `json:"tunnel,omitempty"`
	StartedAt  time.Time      `json:"started_at"`
	ReadyAt    *time.Time     `json:"ready_at,omitempty"`
	JobEndTime *time.Time     `json:"job_end_time,omitempty"`
	Restarts   map[string]int `json:"restarts"`
	UpdatedAt  time.Time      `json:"updated_at"`
}

// ModelPrep is a phase of the model's preparation on the head: "verify" (its share of the
// hashing) or "stage" (its copy to node-local disk).
type ModelPrep struct {
	Phase          string  `json:"phase"`
	BytesDone      int64   `json:"bytes_done"`
	BytesTotal     int64   `json:"bytes_total,omitempty"`
	BytesPerSecond float64 `json:"bytes_per_second"`
	Seconds        float64 `json:"seconds"`
}

// ReadConnection reads a connection file.
func ReadConnection(path string) (Connection, error) {
	var c Connection
	b, err := os.ReadFile(path)
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("parse %s: %w", path, err)
	}
	return c, nil
}

// SSHTunnelCommand returns the command that forwards the API port from a workstation through the
// login host.
func SSHTunnelCommand(port int, head, user, login string) string {
	if user == "" {
		user = "USER"
	}
	if login == "" {
		login = "LOGIN-HOST"
	}
	return fmt.Sprintf("ssh -N -L %d:%s:%d %s@%s", port, head, port, user, login)
}

// TunnelCommand returns the llm-agent tunnel command that a laptop runs for the job.
func TunnelCommand(jobID, user, login string) string {
	if user == "" {
		user = "USER"
	}
	if login == "" {
		login = "LOGIN-HOST"
	}
	return fmt.Sprintf("llm-agent tunnel --login %s@%s %s", user, login, jobID)
}

// DashboardTunnelCommand returns the ssh command that forwards the head's loopback-only Ray
// dashboard to the owner's machine, through the login host.
func DashboardTunnelCommand(port int, head, user, login string) string {
	if user == "" {
		user = "USER"
	}
	if login == "" {
		login = "LOGIN-HOST"
	}
	return fmt.Sprintf("ssh -N -L %d:127.0.0.1:%d -J %s@%s %s@%s", port, port, user, login, user, head)
}

// ConnectionWriter keeps the connection files true: every change rewrites connection.json and
// connection.env atomically with mode 0600.
type ConnectionWriter struct {
	dir    string
	apiKey string

	mu   sync.Mutex
	conn Connection
	// watch hears every write, with what was written.
	watch func(Connection)
	// failed is why the last write failed (a full disk): the file on disk is the last whole one,
	// and Retry writes the connection as it is now.
	failed error
}

// Watch calls f with the connection now and after every change, in the order of the writes.
func (w *ConnectionWriter) Watch(f func(Connection)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.watch = f
	f(w.snapshot())
}

// NewConnectionWriter writes the API key file and returns a writer for conn. The key is written
// only to files of mode 0600. With no key (clients bring their own from a keys file) the env
// file holds the base URL alone.
func NewConnectionWriter(dir string, conn Connection, apiKey string) (*ConnectionWriter, error) {
	conn.EnvFile = filepath.Join(dir, ConnectionEnvFile)
	if apiKey != "" {
		conn.APIKeyFile = filepath.Join(dir, APIKeyFile)
	}
	if conn.Restarts == nil {
		conn.Restarts = map[string]int{}
	}
	w := &ConnectionWriter{dir: dir, apiKey: apiKey, conn: conn}
	env := fmt.Sprintf("# llm-agent job %s: source this file to use the endpoint with any OpenAI client\nexport OPENAI_BASE_URL=%s\n",
		conn.JobID, shellQuote(conn.BaseURL))
	if apiKey != "" {
		if err := WriteFileAtomic(conn.APIKeyFile, []byte(apiKey+"\n"), 0o600); err != nil {
			return nil, err
		}
		env += "export OPENAI_API_KEY=" + shellQuote(apiKey) + "\n"
	} else {
		env += "# the keys are in " + conn.KeysFile + "; set OPENAI_API_KEY to yours\n"
	}
	if err := WriteFileAtomic(conn.EnvFile, []byte(env), 0o600); err != nil {
		return nil, err
	}
	return w, w.write()
}

// Update applies f to the connection and rewrites the file if anything changed.
func (w *ConnectionWriter) Update(f func(c *Connection)) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	before := w.conn
	before.Restarts = maps.Clone(w.conn.Restarts)
	before.Metrics = append([]NodeEndpoint(nil), w.conn.Metrics...)
	before.Adapters = append([]Adapter(nil), w.conn.Adapters...)
	before.Replicas = append([]Replica(nil), w.conn.Replicas...)
	f(&w.conn)
	a, _ := json.Marshal(before)
	b, _ := json.Marshal(w.conn)
	if string(a) == string(b) {
		return nil
	}
	return w.write()
}

// SetState moves the service to state, with reason for failed or restarting states.
func (w *ConnectionWriter) SetState(state ServiceState, reason string) error {
	return w.Update(func(c *Connection) {
		c.State = state
		c.Reason = reason
		if state == StateReady && c.ReadyAt == nil {
			now := time.Now().UTC()
			c.ReadyAt = &now
		}
	})
}

// EverReady tells whether the service has been ready since the file was made (ready_at).
func (w *ConnectionWriter) EverReady() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.conn.ReadyAt != nil
}

// Snapshot returns a copy of the current connection.
func (w *ConnectionWriter) Snapshot() Connection {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.snapshot()
}

func (w *ConnectionWriter) snapshot() Connection {
	c := w.conn
	c.Restarts = maps.Clone(w.conn.Restarts)
	return c
}

// Retry writes the connection again when the last write failed; it returns the write's error,
// nil when none was needed.
func (w *ConnectionWriter) Retry() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failed == nil {
		return nil
	}
	return w.write()
}

// Failed is why the last write failed; nil once one succeeded.
func (w *ConnectionWriter) Failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.failed
}

func (w *ConnectionWriter) write() error {
	w.conn.UpdatedAt = time.Now().UTC()
	if err := WriteJSONAtomic(filepath.Join(w.dir, ConnectionFile), w.conn, 0o600); err != nil {
		w.failed = err
		return err
	}
	w.failed = nil
	if w.watch != nil {
		w.watch(w.snapshot())
	}
	return nil
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
