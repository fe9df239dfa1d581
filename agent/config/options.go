package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/llm-agent/llm-agent/vllm"
)

// OptionKind says how an option's text is parsed.
type OptionKind int

// The kinds of option values.
const (
	KindString OptionKind = iota
	KindInt
	KindFloat
	KindDuration
	KindBool
	// KindList options repeat on the command line, are a YAML sequence in the file, and are
	// split on whitespace in the environment.
	KindList
)

// Option is one configuration setting, named the same as flag, YAML key and (upper-cased, dashes
// to underscores, LLM_AGENT_ prefix) environment variable.
type Option struct {
	Name     string
	Category string
	Usage    string
	Kind     OptionKind
	set      func(c *Config, v string) error
	get      func(c *Config) string
	// clear empties a list option, which a later source replaces as a whole.
	clear func(c *Config)
	// Repeat marks a string option that may be given more than once on the command line or as
	// a YAML sequence; its environment variable holds one value.
	Repeat bool
}

// Env returns the option's environment variable.
func (o Option) Env() string {
	return "LLM_AGENT_" + strings.ToUpper(strings.ReplaceAll(o.Name, "-", "_"))
}

// Default returns the option's default as text.
func (o Option) Default() string {
	d := Default()
	return o.get(&d)
}

func stringOpt(name, cat, usage string, f func(*Config) *string) Option {
	return Option{Name: name, Category: cat, Usage: usage, Kind: KindString,
		set: func(c *Config, v string) error { *f(c) = v; return nil },
		get: func(c *Config) string { return *f(c) }}
}

func intOpt(name, cat, usage string, min int, f func(*Config) *int) Option {
	return Option{Name: name, Category: cat, Usage: usage, Kind: KindInt,
		set: func(c *Config, v string) error {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				return fmt.Errorf("%q is not a whole number", v)
			}
			if n < min {
				return fmt.Errorf("%d is below the minimum %d", n, min)
			}
			*f(c) = n
			return nil
		},
		get: func(c *Config) string { return strconv.Itoa(*f(c)) }}
}

func portOpt(name, usage string, f func(*Config) *int) Option {
	o := intOpt(name, "Ports", usage+"; a busy port falls back to a free one", 0, f)
	inner := o.set
	o.set = func(c *Config, v string) error {
		if err := inner(c, v); err != nil {
			return err
		}
		if *f(c) > 65535 {
			return fmt.Errorf("%d is not a TCP port", *f(c))
		}
		return nil
	}
	return o
}

func durationOpt(name, cat, usage string, f func(*Config) *time.Duration) Option {
	return Option{Name: name, Category: cat, Usage: usage, Kind: KindDuration,
		set: func(c *Config, v string) error {
			d, err := time.ParseDuration(strings.TrimSpace(v))
			if err != nil {
				return fmt.Errorf("%q is not a duration such as 30s or 5m", v)
			}
			if d <= 0 {
				return fmt.Errorf("%s must be positive", d)
			}
			*f(c) = d
			return nil
		},
		get: func(c *Config) string { return f(c).String() }}
}

// offWhenZero shows a duration that is off by default as no default at all.
func offWhenZero(o Option) Option {
	get := o.get
	o.get = func(c *Config) string {
		if v := get(c); v != "0s" {
			return v
		}
		return ""
	}
	return o
}

func boolOpt(name, cat, usage string, f func(*Config) *bool) Option {
	return Option{Name: name, Category: cat, Usage: usage, Kind: KindBool,
		set: func(c *Config, v string) error {
			b, err := strconv.ParseBool(strings.TrimSpace(v))
			if err != nil {
				return fmt.Errorf("%q is not true or false", v)
			}
			*f(c) = b
			return nil
		},
		get: func(c *Config) string { return strconv.FormatBool(*f(c)) }}
}

// Options lists every setting of `llm-agent run`.
var Options = []Option{
	{Name: "model", Category: "Model", Kind: KindString, Repeat: true,
		Usage: "model to serve: a local directory or a Hugging Face id (required); given again, the job serves each model on its share of the nodes",
		set: func(c *Config, v string) error {
			if c.Model == "" {
				c.Model = v
			} else {
				c.MoreModels = append(c.MoreModels, v)
			}
			return nil
		},
		get:   func(c *Config) string { return strings.Join(append([]string{c.Model}, c.MoreModels...), " ") },
		clear: func(c *Config) { c.Model, c.MoreModels = "", nil }},
	stringOpt("models-file", "Model", "YAML file of the models to serve, each with its served name, replicas, vLLM arguments and adapters (README: Several models)", func(c *Config) *string { return &c.ModelsFile }),
	stringOpt("served-model-name", "Model", "name clients use for the model (default: the model's last path element)", func(c *Config) *string { return &c.ServedModelName }),
	stringOpt("preset", "Model", "named set of vLLM options (llm-agent presets lists them); --vllm-arg wins over it", func(c *Config) *string { return &c.Preset }),
	stringOpt("presets-file", "Model", "presets file to use instead of the shipped slurm-scripts/presets.yaml", func(c *Config) *string { return &c.PresetsFile }),
	stringOpt("gpu-memory", "Model", "memory of one GPU for planning, such as 80GB (default: read through NVML)", func(c *Config) *string { return &c.GPUMemory }),
	stringOpt("launcher", "Model", "how the engine spans nodes: ray (a Ray cluster and vLLM's Ray executor) or mp (vLLM's own multi-node mode: one rank per node, no Ray)", func(c *Config) *string { return &c.Launcher }),
	intOpt("tensor-parallel-size", "Model", "GPUs per pipeline stage, within one node (0: planned from the model and the allocation)", 0, func(c *Config) *int { return &c.TensorParallel }),
	intOpt("replicas", "Model", "whole engines of the model, one per node, behind the head's gateway, which sends each request to the one with the fewest in flight (0: one per node when the plan finds the model fits on one node, else one engine over the allocation; 1: one engine)", 0, func(c *Config) *int { return &c.Replicas }),
	intOpt("pipeline-parallel-size", "Model", "pipeline stages, across nodes (0: planned from the model and the allocation)", 0, func(c *Config) *int { return &c.PipelineParallel }),
	{Name: "vllm-arg", Category: "Model", Kind: KindList, Usage: "extra argument passed to vllm serve, repeatable (--vllm-arg=--max-model-len --vllm-arg=8192)",
		set:   func(c *Config, v string) error { c.VLLMArgs = append(c.VLLMArgs, v); return nil },
		get:   func(c *Config) string { return strings.Join(c.VLLMArgs, " ") },
		clear: func(c *Config) { c.VLLMArgs = nil }},
	{Name: "lora", Category: "Model", Kind: KindList, Usage: "LoRA adapter NAME=PATH served under NAME, repeatable; enables LoRA and sizes --max-lora-rank from the adapters (llm-agent lora adds more at run time)",
		set: func(c *Config, v string) error {
			if _, _, err := vllm.ParseAdapterSpec(v); err != nil {
				return err
			}
			c.LoRA = append(c.LoRA, v)
			return nil
		},
		get:   func(c *Config) string { return strings.Join(c.LoRA, " ") },
		clear: func(c *Config) { c.LoRA = nil }},
	{Name: "verify-model", Category: "Model", Kind: KindString,
		Usage: "check the model's files before the engine starts, against a Hugging Face cache snapshot's content addresses or the directory's SHA256SUMS, the nodes sharing the hashing: auto (when there is either), on (refuse a model with neither) or off",
		set: func(c *Config, v string) error {
			switch v = strings.TrimSpace(v); v {
			case VerifyAuto, VerifyOn, VerifyOff:
				c.VerifyModel = v
				return nil
			}
			return fmt.Errorf("%q is not auto, on or off", v)
		},
		get: func(c *Config) string { return c.VerifyModel }},
	stringOpt("stage-dir", "Model", "node-local directory (an NVMe scratch) every node copies the model to before the engine starts, verifying it in the same pass; the engine loads the copy", func(c *Config) *string { return &c.StageDir }),
	boolOpt("stage-keep", "Model", "keep the staged copy after the job, for the next job on the node to reuse (default: removed when the job ends)", func(c *Config) *bool { return &c.StageKeep }),
	stringOpt("vllm-bin", "Executables", "vllm executable", func(c *Config) *string { return &c.VLLMBin }),
	stringOpt("ray-bin", "Executables", "ray executable", func(c *Config) *string { return &c.RayBin }),
	stringOpt("state-dir", "Files", "job state directory on the shared filesystem (default: $HOME/.llm-agent/jobs/$SLURM_JOB_ID)", func(c *Config) *string { return &c.StateDir }),
	stringOpt("targets-dir", "Files", "directory of per-job Prometheus file_sd files, one glob for a login-node Prometheus (default: $HOME/.llm-agent/targets; none: off)", func(c *Config) *string { return &c.TargetsDir }),
	stringOpt("api-key-file", "Files", "file (mode 0600) holding the API key; without it a key is generated for the job", func(c *Config) *string { return &c.APIKeyFile }),
	boolOpt("gateway", "Gateway", "put the agent's authenticated gateway on the public port, with vLLM behind it on a private Unix socket; false gives vLLM the public port and the key (see docs/security.md)", func(c *Config) *bool { return &c.Gateway }),
	stringOpt("keys-file", "Gateway", "YAML or JSON file (mode 0600) of client keys: {keys: [{name, project, key or sha256, priority}]}; reloaded on SIGHUP and on change", func(c *Config) *string { return &c.KeysFile }),
	boolOpt("ui", "Gateway", "serve the web page (status, usage, chat) under /ui/ on the gateway's port; it signs in with an API key", func(c *Config) *bool { return &c.UI }),
	stringOpt("ui-frame-ancestors", "Gateway", "origins that may frame the web page, space-separated, such as https://ondemand.example.edu (default: none may)", func(c *Config) *string { return &c.UIFrameAncestors }),
	stringOpt("max-request-body", "Gateway", "largest request body the gateway accepts", func(c *Config) *string { return &c.MaxRequestBody }),
	intOpt("max-in-flight-per-key", "Gateway", "requests one key may have in flight; past it the client gets 429 (0: no bound)", 0, func(c *Config) *int { return &c.MaxInFlightPerKey }),
	intOpt("max-in-flight", "Gateway", "requests all keys together may have in flight; past it clients get 429 (0: no bound)", 0, func(c *Config) *int { return &c.MaxInFlight }),
	stringOpt("iface", "Network", "network interface whose address Ray, vLLM, NCCL and Gloo use (default: the address the host name resolves to)", func(c *Config) *string { return &c.Iface }),
	stringOpt("login-host", "Network", "login host named in the SSH tunnel command (default: SLURM_SUBMIT_HOST)", func(c *Config) *string { return &c.LoginHost }),
	portOpt("port", "OpenAI API port on the head (default 8000 + job offset)", func(c *Config) *int { return &c.Port }),
	portOpt("metrics-port", "Prometheus metrics port on every node (default 9500 + job offset)", func(c *Config) *int { return &c.MetricsPort }),
	portOpt("ray-port", "Ray GCS port on the head (default 6379 + job offset)", func(c *Config) *int { return &c.RayPort }),
	portOpt("ray-dashboard-port", "Ray dashboard port (default 8265 + job offset)", func(c *Config) *int { return &c.DashboardPort }),
	portOpt("ray-client-port", "Ray client server port (default 10001 + job offset)", func(c *Config) *int { return &c.RayClientPort }),
	portOpt("ray-node-manager-port", "Ray node manager port on every node (default 6500 + job offset)", func(c *Config) *int { return &c.NodeManagerPort }),
	portOpt("ray-object-manager-port", "Ray object manager port on every node (default 6600 + job offset)", func(c *Config) *int { return &c.ObjectManagerPort }),
	{Name: "ray-worker-ports", Category: "Ports", Kind: KindString, Usage: "Ray worker port range MIN-MAX (default: 200 ports from 11000 + 200 x job offset)",
		set: func(c *Config, v string) error {
			lo, hi, ok := strings.Cut(strings.TrimSpace(v), "-")
			a, err1 := strconv.Atoi(lo)
			b, err2 := strconv.Atoi(hi)
			if !ok || err1 != nil || err2 != nil || a < 1024 || b > 65535 || b-a < 15 {
				return fmt.Errorf("%q is not a range MIN-MAX of at least 16 ports between 1024 and 65535", v)
			}
			c.WorkerPortMin, c.WorkerPortMax = a, b
			return nil
		},
		get: func(c *Config) string {
			if c.WorkerPortMin == 0 {
				return ""
			}
			return fmt.Sprintf("%d-%d", c.WorkerPortMin, c.WorkerPortMax)
		}},
	durationOpt("rendezvous-timeout", "Timeouts", "how long workers wait for the head's rendezvous file", func(c *Config) *time.Duration { return &c.RendezvousTimeout }),
	durationOpt("ray-timeout", "Timeouts", "how long the head waits for all nodes to join Ray", func(c *Config) *time.Duration { return &c.RayTimeout }),
	durationOpt("node-lost-timeout", "Timeouts", "how long the head waits for a node Ray lost while serving to join again; past it the job fails, naming the node (unreachable: a network partition or a lost node)", func(c *Config) *time.Duration { return &c.NodeLostTimeout }),
	durationOpt("engine-timeout", "Timeouts", "how long the engine may take to become ready (model loading)", func(c *Config) *time.Duration { return &c.EngineTimeout }),
	durationOpt("model-timeout", "Timeouts", "how long the head waits for every node's share of the model's verification, or its staging", func(c *Config) *time.Duration { return &c.ModelTimeout }),
	durationOpt("grace", "Timeouts", "drain budget on SIGTERM: engine, then Ray; keep it under Slurm's KillWait (30s)", func(c *Config) *time.Duration { return &c.Grace }),
	durationOpt("probe-interval", "Health", "time between engine health probes", func(c *Config) *time.Duration { return &c.ProbeInterval }),
	durationOpt("probe-timeout", "Health", "timeout of one health probe", func(c *Config) *time.Duration { return &c.ProbeTimeout }),
	durationOpt("hang-after", "Health", "restart the engine when, for this long, it has answered no health probe and sent nothing for the requests in flight", func(c *Config) *time.Duration { return &c.HangAfter }),
	durationOpt("ray-poll-interval", "Health", "time between checks that every Ray node is alive", func(c *Config) *time.Duration { return &c.RayPollInterval }),
	intOpt("max-restarts", "Restarts", "restarts allowed within the restart window before the job fails", 0, func(c *Config) *int { return &c.MaxRestarts }),
	durationOpt("restart-window", "Restarts", "window that max-restarts counts in", func(c *Config) *time.Duration { return &c.RestartWindow }),
	durationOpt("backoff-initial", "Restarts", "first restart delay; it doubles after each failure", func(c *Config) *time.Duration { return &c.BackoffInitial }),
	durationOpt("backoff-max", "Restarts", "longest restart delay", func(c *Config) *time.Duration { return &c.BackoffMax }),
	durationOpt("stable-after", "Restarts", "run time after which the backoff starts again from backoff-initial", func(c *Config) *time.Duration { return &c.StableAfter }),
	{Name: "su-factor", Category: "Accounting", Kind: KindFloat, Usage: "service units per GPU-hour",
		set: func(c *Config, v string) error {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil || f < 0 {
				return fmt.Errorf("%q is not a non-negative number", v)
			}
			c.SUFactor = f
			return nil
		},
		get: func(c *Config) string { return strconv.FormatFloat(c.SUFactor, 'f', -1, 64) }},
	durationOpt("gpu-sample-interval", "Metrics", "how often the slow GPU fields (energy, PCIe throughput) are sampled in the background", func(c *Config) *time.Duration { return &c.GPUSampleInterval }),
	stringOpt("service", "Service", "give the endpoint a name that outlives the job: its connection file ~/.llm-agent/services/NAME/connection.json always points to the job serving now (README: Keeping a model up for days)", func(c *Config) *string { return &c.Service }),
	stringOpt("until", "Service", "keep the service up until this time (2026-12-24T18:00, local time, or RFC 3339): each job queues its successor, which takes over before the job's time limit", func(c *Config) *string { return &c.Until }),
	{Name: "for", Category: "Service", Kind: KindDuration, Usage: "keep the service up this long from the first job's start (7d, 36h, or Slurm's 7-00:00:00); see --until",
		set: func(c *Config, v string) error {
			d, err := parseLongDuration(v)
			if err != nil {
				return err
			}
			c.For = d
			return nil
		},
		get: func(c *Config) string {
			if c.For == 0 {
				return ""
			}
			return c.For.String()
		}},
	durationOpt("handover", "Service", "how long before a job's time limit its successor may start; the successor is queued with --dependency=after:JOB+(limit - handover)", func(c *Config) *time.Duration { return &c.Handover }),
	offWhenZero(durationOpt("idle-release", "Service", "end the service's job once no request has arrived for this long (off by default); the service sleeps until `llm-agent service wake NAME` or a client that finds it asleep queues its job again", func(c *Config) *time.Duration { return &c.IdleRelease })),
	intOpt("max-jobs", "Service", "the most jobs the service runs at once under load, the serving one included; each added job is one more engine behind the service's endpoint (1: no scaling)", 1, func(c *Config) *int { return &c.MaxJobs }),
	intOpt("scale-target", "Service", "requests waiting per engine above which the service adds a job (--max-jobs)", 1, func(c *Config) *int { return &c.ScaleTarget }),
	durationOpt("scale-window", "Service", "how far back the waiting requests are averaged (--max-jobs)", func(c *Config) *time.Duration { return &c.ScaleWindow }),
	durationOpt("scale-interval", "Service", "how often the engines' waiting requests are sampled (--max-jobs)", func(c *Config) *time.Duration { return &c.ScaleInterval }),
	durationOpt("scale-up-delay", "Service", "how long the load must stay above the target before a job is added (--max-jobs)", func(c *Config) *time.Duration { return &c.ScaleUpDelay }),
	durationOpt("scale-down-delay", "Service", "how long fewer engines must have sufficed before the youngest added job is drained (--max-jobs)", func(c *Config) *time.Duration { return &c.ScaleDownDelay }),
	stringOpt("extra-of", "Service", "set by a service's serving job on a job it adds under load (--max-jobs): the job that added it; not for users", func(c *Config) *string { return &c.ExtraOf }),
	intOpt("successor-retries", "Service", "how many times a successor that fails before it is ready is queued again", 0, func(c *Config) *int { return &c.SuccessorRetries }),
	{Name: "successor-sbatch-arg", Category: "Service", Kind: KindList, Usage: "sbatch option added to the successors' submission, repeatable (--successor-sbatch-arg=--exclude=node7)",
		set: func(c *Config, v string) error {
			if !strings.HasPrefix(v, "-") {
				return fmt.Errorf("%q is not an sbatch option (it must begin with -)", v)
			}
			c.SuccessorSbatch = append(c.SuccessorSbatch, v)
			return nil
		},
		get:   func(c *Config) string { return strings.Join(c.SuccessorSbatch, " ") },
		clear: func(c *Config) { c.SuccessorSbatch = nil }},
	stringOpt("log-level", "Logging", "trace, debug, info, warn or error", func(c *Config) *string { return &c.LogLevel }),
	boolOpt("log-json", "Logging", "log as JSON lines", func(c *Config) *bool { return &c.LogJSON }),
}

func lookupOption(name string) (Option, bool) {
	for _, o := range Options {
		if o.Name == name {
			return o, true
		}
	}
	return Option{}, false
}

// Setting is one value given on the command line. A list option may appear several times.
type Setting struct {
	Name  string
	Value string
}
