//go:build cgo

package main

// The commands of the nodes: the agent itself and the views of a job's state directory. They
// need NVML (cgo); a build without cgo, such as a laptop's, has the client commands only.

import (
	"context"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/urfave/cli/v2"

	"github.com/llm-agent/llm-agent/agent"
	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/node"
	"github.com/llm-agent/llm-agent/agent/status"
	"github.com/llm-agent/llm-agent/slurm"
	"github.com/llm-agent/llm-agent/supervisor"
)

// nodeCommands are the commands that run on the cluster.
func nodeCommands() []*cli.Command {
	return []*cli.Command{runCommand(), statusCommand(), usageCommand(), serviceCommand(), planCommand(), presetsCommand(), modelCommand()}
}

// beforeMain lets the agent re-execute itself as the reaper of each child process.
func beforeMain() { supervisor.MaybeRunReaper() }

// inputErrors are the errors of input the user must fix: they exit 2.
var inputErrors = []error{config.ErrInvalid, slurm.ErrAllocation, agent.ErrBadInput, node.ErrPort, node.ErrAddress}

func runCommand() *cli.Command {
	flags := []cli.Flag{&cli.StringFlag{
		Name:     "config",
		Category: "Files",
		Usage:    "YAML file of options (keys are the flag names); precedence: flag > environment > file > default [$LLM_AGENT_CONFIG]",
	}}
	for _, o := range config.Options {
		usage := o.Usage + " [$" + o.Env() + "]"
		def := o.Default()
		if def == "0" || def == "false" {
			def = ""
		}
		switch {
		case o.Kind == config.KindBool:
			flags = append(flags, &cli.BoolFlag{Name: o.Name, Category: o.Category, Usage: usage, DefaultText: o.Default()})
		case o.Kind == config.KindList || o.Repeat:
			flags = append(flags, &cli.StringSliceFlag{Name: o.Name, Category: o.Category, Usage: usage})
		default:
			flags = append(flags, &cli.StringFlag{Name: o.Name, Category: o.Category, Usage: usage, DefaultText: def})
		}
	}
	return &cli.Command{
		Name:         "run",
		OnUsageError: onUsageError,
		Usage:        "run this node's agent: one per node, under srun --ntasks-per-node=1",
		UsageText:    "srun --ntasks-per-node=1 -K1 llm-agent run --model PATH [options]",
		Description: "The first host of SLURM_JOB_NODELIST is the head: it starts Ray, publishes rendezvous.json, " +
			"starts vllm serve once every node has joined, and keeps connection.json current. The other nodes join Ray. " +
			"SIGTERM drains the engine, then Ray, within --grace, and exits 0.",
		Flags:  flags,
		Action: runAction,
	}
}

// contextToConfig turns the command line into the agent's configuration; nothing else sees the
// cli context.
func contextToConfig(c *cli.Context) (config.Config, error) {
	path := c.String("config")
	if path == "" {
		path = os.Getenv("LLM_AGENT_CONFIG")
	}
	file, err := config.ReadFile(path)
	if err != nil {
		return config.Config{}, err
	}
	var set []config.Setting
	for _, o := range config.Options {
		if !c.IsSet(o.Name) {
			continue
		}
		switch {
		case o.Kind == config.KindBool:
			set = append(set, config.Setting{Name: o.Name, Value: strconv.FormatBool(c.Bool(o.Name))})
		case o.Kind == config.KindList || o.Repeat:
			for _, v := range c.StringSlice(o.Name) {
				set = append(set, config.Setting{Name: o.Name, Value: v})
			}
		default:
			set = append(set, config.Setting{Name: o.Name, Value: c.String(o.Name)})
		}
	}
	return config.Resolve(file, os.Getenv, set)
}

func newLogger(cfg config.Config) (hclog.Logger, error) {
	level := hclog.LevelFromString(cfg.LogLevel) // checked by the configuration
	return hclog.New(&hclog.LoggerOptions{
		Name:       "llm-agent",
		Level:      level,
		JSONFormat: cfg.LogJSON,
		Output:     os.Stderr,
		TimeFormat: "2006-01-02T15:04:05.000Z0700",
	}), nil
}

// runStopSignals drain the agent: SIGTERM (scancel, the time limit) and SIGINT, and the signals
// whose default action would end it without a word, which a job's --signal=USR1@... or a lost
// terminal sends.
var runStopSignals = []os.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2}

func runAction(c *cli.Context) error {
	if c.Args().Len() > 0 {
		return usageErrorf("run takes no arguments, got %q; options go in flags such as --model", c.Args().First())
	}
	cfg, err := contextToConfig(c)
	if err != nil {
		return err
	}
	log, err := newLogger(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), runStopSignals...)
	defer stop()
	// A write to a closed standard output or error then fails instead of killing the agent.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	setRuntimeDefaults()
	return agent.Run(ctx, cfg, agent.DefaultDeps(log))
}

// Go runtime defaults for a long-running agent that shares its node with the engine; GOGC and
// GOMAXPROCS in the environment override them. docs/benchmarks.md has the measurements.
const (
	// agentGCPercent halves the runtime's smallest heap goal (4 MB at the default 100). The
	// agent's live heap is under 1 MB, so this cuts its resident memory by about 2 MB.
	agentGCPercent = 50
	// agentMaxProcs caps the Go processors on many-core GPU nodes, where the default of one per
	// core adds per-processor memory and threads the agent does not need.
	agentMaxProcs = 4
)

func setRuntimeDefaults() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(agentGCPercent)
	}
	if os.Getenv("GOMAXPROCS") == "" && runtime.GOMAXPROCS(0) > agentMaxProcs {
		runtime.GOMAXPROCS(agentMaxProcs)
	}
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:         "status",
		OnUsageError: onUsageError,
		Usage:        "show a job's state, URL, uptime, restarts, GPUs and time left; exit 0 when ready, 1 when not",
		ArgsUsage:    "JOBID | STATE_DIR | connection.json  (default: $SLURM_JOB_ID)",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print JSON instead of a table"},
			serviceFlag(),
		},
		Action: func(c *cli.Context) error {
			path, err := jobConnectionPath(c)
			if err != nil {
				return err
			}
			report, err := status.Read(c.Context, path, &http.Client{}, time.Now())
			if err != nil {
				return usageError{err}
			}
			if err := writeReport(c, report); err != nil {
				return err
			}
			if !report.Ready {
				return cli.Exit("", 1)
			}
			return nil
		},
	}
}

func usageCommand() *cli.Command {
	return &cli.Command{
		Name:         "usage",
		OnUsageError: onUsageError,
		Usage:        "summarise a job's audit log per key and project: requests, tokens, and GPU-hours and service units shared out by tokens",
		ArgsUsage:    "JOBID | STATE_DIR | connection.json  (default: $SLURM_JOB_ID)",
		Flags: []cli.Flag{
			&cli.Float64Flag{Name: "su-factor", Value: config.Default().SUFactor, Usage: "service units per GPU-hour"},
			&cli.BoolFlag{Name: "json", Usage: "print JSON instead of a table"},
			serviceFlag(),
		},
		Action: func(c *cli.Context) error {
			path, err := jobConnectionPath(c)
			if err != nil {
				return err
			}
			usage := status.Usage
			if c.String("service") != "" {
				usage = status.ServiceUsage // summed over the service's jobs
			}
			rep, err := usage(path, c.Float64("su-factor"), time.Now())
			if err != nil {
				return usageError{err}
			}
			return writeReport(c, rep)
		},
	}
}

// jobConnectionPath finds the connection file named by the first argument, by --service, or
// by $SLURM_JOB_ID inside a job.
func jobConnectionPath(c *cli.Context) (string, error) {
	if name := c.String("service"); name != "" {
		if c.NArg() > 0 {
			return "", usageErrorf("%s: give a job or --service, not both", c.Command.Name)
		}
		return serviceConnectionPath(name)
	}
	if c.NArg() > 1 {
		return "", usageErrorf("%s takes one job (an id, a state directory or a connection.json), not %d arguments", c.Command.Name, c.NArg())
	}
	arg := c.Args().First()
	if arg == "" {
		arg = os.Getenv("SLURM_JOB_ID")
	}
	path, err := status.ConnectionPath(arg, os.Getenv("HOME"))
	if err != nil {
		return "", usageError{err}
	}
	return path, nil
}
