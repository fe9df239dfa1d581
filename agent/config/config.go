// Package config is the agent's configuration: every option of `llm-agent run` as one plain
// struct with its defaults, its precedence (flags over the environment over the file), its
// validation, and the models file. cmd turns the command line into a Config once; Validate
// checks it; nothing edits it after.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.yaml.in/yaml/v3"

	"github.com/llm-agent/llm-agent/agent/bytesize"
	"github.com/llm-agent/llm-agent/supervisor"
)

// ErrBadInput is wrapped by errors the user can fix before running again: a missing model,
// executable or state directory.
var ErrBadInput = errors.New("bad input")

// ErrInvalid is wrapped by every configuration error.
var ErrInvalid = errors.New("invalid configuration")

// Config is the agent's whole configuration, resolved from flags, LLM_AGENT_* environment
// variables, an optional YAML file and defaults, in that order of precedence.
type Config struct {
	Model string
	// MoreModels are the models of --model given again: the job serves each (see ModelEntries).
	MoreModels []string
	// ModelsFile lists the models of a job that serves several.
	ModelsFile      string
	ServedModelName string
	Preset          string
	PresetsFile     string
	GPUMemory       string
	// Launcher is how the engine spans nodes: LauncherRay or LauncherMP.
	Launcher         string
	TensorParallel   int
	PipelineParallel int
	// Replicas > 1 runs that many whole engines, one per node, behind the head's gateway.
	Replicas int
	VLLMArgs []string
	// LoRA are the adapters to serve, NAME=PATH each.
	LoRA []string
	// VerifyModel is VerifyAuto, VerifyOn or VerifyOff: whether the model's files are checked
	// before the engine starts.
	VerifyModel string
	// StageDir, if set, is node-local disk the model is copied to before the engine starts;
	// StageKeep keeps the copy after the job.
	StageDir       string
	StageKeep      bool
	VLLMBin        string
	RayBin         string
	StateDir       string
	TargetsDir     string
	Iface          string
	LoginHost      string
	APIKeyFile     string
	Gateway        bool
	KeysFile       string
	MaxRequestBody string
	// UI serves the web page under /ui/ on the gateway's port; UIFrameAncestors are the
	// origins (an Open OnDemand host) that may frame it, space-separated; none may by default.
	UI               bool
	UIFrameAncestors string
	// MaxInFlightPerKey and MaxInFlight bound the gateway's requests in flight; 0 means none.
	MaxInFlightPerKey, MaxInFlight int

	// Ports holds the preferred ports; 0 means "the default for this job" (see PortPlan).
	Port, MetricsPort, RayPort, DashboardPort, RayClientPort int
	NodeManagerPort, ObjectManagerPort                       int
	WorkerPortMin, WorkerPortMax                             int

	RendezvousTimeout time.Duration
	RayTimeout        time.Duration
	NodeLostTimeout   time.Duration
	EngineTimeout     time.Duration
	ModelTimeout      time.Duration
	Grace             time.Duration

	ProbeInterval   time.Duration
	ProbeTimeout    time.Duration
	HangAfter       time.Duration
	RayPollInterval time.Duration

	MaxRestarts    int
	RestartWindow  time.Duration
	BackoffInitial time.Duration
	BackoffMax     time.Duration
	StableAfter    time.Duration

	SUFactor          float64
	GPUSampleInterval time.Duration

	LogLevel string
	LogJSON  bool

	// Service names the endpoint across jobs (~/.llm-agent/services/NAME); Until and For end
	// its chain of jobs, each queuing its successor Handover before its end, retried up to
	// SuccessorRetries times, with SuccessorSbatch added to the successor's sbatch options.
	Service          string
	Until            string
	For              time.Duration
	Handover         time.Duration
	SuccessorRetries int
	SuccessorSbatch  []string
	// IdleRelease, when set, ends a service's job once no request has arrived for that long:
	// the service sleeps, its allocation freed, until `llm-agent service wake` or a client
	// that finds it asleep queues its job again.
	IdleRelease time.Duration
	// MaxJobs bounds a service's jobs under load, the serving one included: it adds a job when
	// the requests waiting per engine, averaged over ScaleWindow (sampled every ScaleInterval),
	// stay above ScaleTarget for ScaleUpDelay, and drains the youngest when the others would
	// have sufficed for ScaleDownDelay. ExtraOf is set on such a job: the job that added it.
	MaxJobs, ScaleTarget         int
	ScaleWindow, ScaleInterval   time.Duration
	ScaleUpDelay, ScaleDownDelay time.Duration
	ExtraOf                      string
}

// DefaultConfig returns the defaults documented in `llm-agent run --help`.
func Default() Config {
	restarts := supervisor.DefaultPolicy()
	return Config{
		VLLMBin:           "vllm",
		Gateway:           true,
		UI:                true,
		MaxRequestBody:    "32MiB",
		MaxInFlightPerKey: 256,
		MaxInFlight:       1024,
		RayBin:            "ray",
		RendezvousTimeout: 5 * time.Minute,
		RayTimeout:        5 * time.Minute,
		NodeLostTimeout:   time.Minute,
		EngineTimeout:     30 * time.Minute,
		ModelTimeout:      time.Hour,
		VerifyModel:       VerifyAuto,
		Grace:             20 * time.Second,
		Launcher:          LauncherRay,
		ProbeInterval:     5 * time.Second,
		ProbeTimeout:      10 * time.Second,
		HangAfter:         30 * time.Second,
		RayPollInterval:   5 * time.Second,
		MaxRestarts:       restarts.MaxRestarts,
		RestartWindow:     restarts.Window,
		BackoffInitial:    restarts.Initial,
		BackoffMax:        restarts.Max,
		StableAfter:       restarts.StableAfter,
		SUFactor:          108.6,
		GPUSampleInterval: 5 * time.Second,
		Handover:          15 * time.Minute,
		SuccessorRetries:  2,
		MaxJobs:           1,
		ScaleTarget:       2,
		ScaleWindow:       time.Minute,
		ScaleInterval:     5 * time.Second,
		ScaleUpDelay:      30 * time.Second,
		ScaleDownDelay:    10 * time.Minute,
		LogLevel:          "info",
	}
}

// ResolveConfig builds the configuration from defaults, then the YAML file (nil for none), then
// the environment, then the command line, each overriding the one before.
func Resolve(file []byte, getenv func(string) string, flags []Setting) (Config, error) {
	c := Default()
	if len(bytes.TrimSpace(file)) > 0 {
		if err := c.applyYAML(file); err != nil {
			return Config{}, err
		}
	}
	for _, o := range Options {
		v := getenv(o.Env())
		if v == "" {
			continue
		}
		values := []string{v}
		if o.Kind == KindList {
			values = strings.Fields(v)
		}
		if err := c.setAll(o, values, "environment variable "+o.Env()); err != nil {
			return Config{}, err
		}
	}
	seen := map[string][]string{}
	var order []string
	for _, s := range flags {
		if _, ok := seen[s.Name]; !ok {
			order = append(order, s.Name)
		}
		seen[s.Name] = append(seen[s.Name], s.Value)
	}
	for _, name := range order {
		o, ok := lookupOption(name)
		if !ok {
			return Config{}, fmt.Errorf("%w: unknown option --%s", ErrInvalid, name)
		}
		if err := c.setAll(o, seen[name], "flag --"+name); err != nil {
			return Config{}, err
		}
	}
	return c, c.Validate()
}

// The settings of --verify-model.
const (
	// VerifyAuto verifies a model that has something to verify against: a Hugging Face cache
	// snapshot (its content addresses) or a SHA256SUMS.
	VerifyAuto = "auto"
	// VerifyOn verifies, and refuses a model with nothing to verify against.
	VerifyOn = "on"
	// VerifyOff reads nothing before the engine starts.
	VerifyOff = "off"
)

// The launchers: how the engine spans nodes.
const (
	// LauncherRay runs a Ray cluster over the nodes and vLLM's Ray executor on it.
	LauncherRay = "ray"
	// LauncherMP runs one rank of vLLM on each node in its own multi-node mode (--nnodes, the
	// mp executor): rank 0 on the head serves the API, the others run headless. No Ray.
	LauncherMP = "mp"
)

// Validate checks what one option alone cannot: settings that depend on each other, and values
// that need parsing. The agent calls it before anything starts.
func (c Config) Validate() error {
	if c.KeysFile != "" && !c.Gateway {
		return fmt.Errorf("%w: --keys-file needs the gateway (--gateway=true)", ErrInvalid)
	}
	if c.StageKeep && c.StageDir == "" {
		return fmt.Errorf("%w: --stage-keep keeps the copy --stage-dir makes; give --stage-dir", ErrInvalid)
	}
	if c.StageDir != "" && !filepath.IsAbs(c.StageDir) {
		return fmt.Errorf("%w: --stage-dir %q must be an absolute path, the same on every node", ErrInvalid, c.StageDir)
	}
	if _, err := bytesize.Parse(c.MaxRequestBody); err != nil {
		return fmt.Errorf("%w: --max-request-body: %w", ErrInvalid, err)
	}
	if c.GPUMemory != "" {
		if _, err := bytesize.Parse(c.GPUMemory); err != nil {
			return fmt.Errorf("%w: --gpu-memory: %w", ErrInvalid, err)
		}
	}
	if c.Replicas > 1 {
		switch {
		case !c.Gateway:
			return fmt.Errorf("%w: --replicas needs the gateway (--gateway=true), which routes between them", ErrInvalid)
		case c.PipelineParallel > 1:
			return fmt.Errorf("%w: --replicas runs one whole engine per node; a replica whose model spans nodes (--pipeline-parallel-size %d) is not supported: use --replicas 1 for one engine over the nodes",
				ErrInvalid, c.PipelineParallel)
		}
	}
	if c.Launcher != LauncherRay && c.Launcher != LauncherMP {
		return fmt.Errorf("%w: --launcher %q: choose ray or mp", ErrInvalid, c.Launcher)
	}
	if c.HangAfter <= c.ProbeInterval {
		return fmt.Errorf("%w: --hang-after (%s) must be longer than --probe-interval (%s)", ErrInvalid, c.HangAfter, c.ProbeInterval)
	}
	if _, err := c.Adapters(); err != nil {
		return err
	}
	if err := c.validateUI(); err != nil {
		return err
	}
	if err := c.validateService(); err != nil {
		return err
	}
	if c.LogLevel != "" && hclog.LevelFromString(c.LogLevel) == hclog.NoLevel {
		return fmt.Errorf("%w: log level %q is not trace, debug, info, warn or error", ErrInvalid, c.LogLevel)
	}
	return nil
}

// setAll sets an option from one source; a list option is replaced, not appended to.
func (c *Config) setAll(o Option, values []string, source string) error {
	if o.clear != nil {
		o.clear(c)
	}
	for _, v := range values {
		if err := o.set(c, v); err != nil {
			return fmt.Errorf("%w: %s: %w", ErrInvalid, source, err)
		}
	}
	return nil
}

func (c *Config) applyYAML(data []byte) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("%w: config file: %w", ErrInvalid, err)
	}
	if len(doc.Content) == 0 {
		return nil
	}
	m := doc.Content[0]
	if m.Kind != yaml.MappingNode {
		return fmt.Errorf("%w: config file: line %d: expected a mapping of option: value", ErrInvalid, m.Line)
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		key, val := m.Content[i], m.Content[i+1]
		o, ok := lookupOption(key.Value)
		if !ok {
			return fmt.Errorf("%w: config file: line %d: unknown key %q (see llm-agent run --help for the options)", ErrInvalid, key.Line, key.Value)
		}
		var values []string
		switch {
		case (o.Kind == KindList || o.Repeat) && val.Kind == yaml.SequenceNode:
			for _, item := range val.Content {
				if item.Kind != yaml.ScalarNode {
					return fmt.Errorf("%w: config file: line %d: %s items must be plain values", ErrInvalid, item.Line, o.Name)
				}
				values = append(values, item.Value)
			}
		case val.Kind == yaml.ScalarNode:
			values = []string{val.Value}
		default:
			return fmt.Errorf("%w: config file: line %d: %s takes a single value", ErrInvalid, val.Line, o.Name)
		}
		if err := c.setAll(o, values, fmt.Sprintf("config file line %d", val.Line)); err != nil {
			return err
		}
	}
	return nil
}

// ReadFile reads the YAML configuration file at path; an empty path reads nothing.
func ReadFile(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: read config file: %w", ErrInvalid, err)
	}
	return b, nil
}
