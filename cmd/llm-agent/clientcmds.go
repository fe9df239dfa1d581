package main

import (
	"context"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/llm-agent/llm-agent/clients/bench"
	"github.com/llm-agent/llm-agent/clients/lora"
	"github.com/llm-agent/llm-agent/clients/tunnel"
)

// clientCommands are the commands for the user's side: they build without cgo, for laptops.
func clientCommands() []*cli.Command {
	return []*cli.Command{tunnelCommand(), stopCommand(), benchCommand(), loraCommand(), hostnamesCommand()}
}

// clientInputErrors are the client commands' errors of input the user must fix: they exit 2.
var clientInputErrors = []error{tunnel.ErrInput, bench.ErrInput, lora.ErrInput}

func loraCommand() *cli.Command {
	timeout := &cli.DurationFlag{Name: "timeout", Value: 2 * time.Minute, Usage: "how long the engine may take to answer"}
	run := func(want int, f func(context.Context, lora.Options) error) cli.ActionFunc {
		return func(c *cli.Context) error {
			if c.NArg() != want {
				return usageErrorf("lora %s takes %d arguments (%s), not %d", c.Command.Name, want, c.Command.ArgsUsage, c.NArg())
			}
			args := c.Args().Slice()
			o := lora.Options{Job: args[0], Name: args[1], Home: os.Getenv("HOME"), Out: c.App.Writer, Timeout: c.Duration("timeout")}
			if want == 3 {
				o.Path = args[2]
			}
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return f(ctx, o)
		}
	}
	return &cli.Command{
		Name:         "lora",
		OnUsageError: onUsageError,
		Usage:        "load or unload a LoRA adapter on a running job (the job's owner only)",
		Description: "The job must serve LoRA: started with --lora NAME=PATH (or --vllm-arg=--enable-lora). " +
			"The command reads the job's connection file and the owner's key beside it (mode 0600: only you can read it), " +
			"and asks the job's gateway, which passes the request to the engine; no client key can. " +
			"An adapter added at run time survives an engine restart, and the connection file lists it.",
		Subcommands: []*cli.Command{
			{Name: "add", OnUsageError: onUsageError, Usage: "load the adapter in PATH and serve it as NAME",
				ArgsUsage: "JOBID NAME PATH", Flags: []cli.Flag{timeout}, Action: run(3, lora.Add)},
			{Name: "remove", OnUsageError: onUsageError, Usage: "unload the adapter NAME",
				ArgsUsage: "JOBID NAME", Flags: []cli.Flag{timeout}, Action: run(2, lora.Remove)},
		},
	}
}

func tunnelCommand() *cli.Command {
	return &cli.Command{
		Name:         "tunnel",
		OnUsageError: onUsageError,
		Usage:        "forward a job's endpoint to a local port, from a laptop through the login host, and watch it",
		UsageText:    "llm-agent tunnel [--login USER@HOST] [--local-port P] [--fetch-key] [options] JOBID|STATE_DIR|connection.json\nllm-agent tunnel [--login USER@HOST] [options] --service NAME",
		ArgsUsage:    "JOBID | STATE_DIR | connection.json",
		Description: "Reads the job's connection file through the login host (with the system's ssh, as you log in), " +
			"forwards 127.0.0.1:P to the head's API port and prints the lines to paste. Every few seconds it asks " +
			"/readyz through the forward and shows the state: starting, ready, restarting, stopping. When ssh drops it " +
			"reconnects with backoff; when the job's head or port changes it re-forwards; the local port stays the same. " +
			"It ends on Ctrl-C, or when the job ends (exit 0 when it stopped, 1 when it failed). Without --login it runs " +
			"on the login host and reads the file there. The key is copied only with --fetch-key, and never printed. " +
			"A service that sleeps (--idle-release) keeps the tunnel up: a request to it is held while the tunnel wakes it " +
			"(llm-agent service wake on the login host), showing queued, starting and ready, and then sent; past " +
			"--wake-timeout, or with --wake-timeout 0, the request is answered 503 with Retry-After and the service's state.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "service", Usage: "a service's name instead of a job (~/.llm-agent/services/NAME)"},
			&cli.StringFlag{Name: "login", Usage: "login host to go through, as ssh takes it ([USER@]HOST or a Host of ~/.ssh/config); empty when running on the login host"},
			&cli.IntFlag{Name: "local-port", Usage: "port on 127.0.0.1", DefaultText: "the job's own API port"},
			&cli.BoolFlag{Name: "fetch-key", Usage: "copy the job's API key to --key-file (mode 0600)"},
			&cli.StringFlag{Name: "key-file", Usage: "where --fetch-key writes the key (default: ~/.llm-agent/keys/JOBID)"},
			&cli.StringSliceFlag{Name: "ssh-option", Usage: "an ssh -o option, such as IdentityFile=~/.ssh/id_cluster (repeatable)"},
			&cli.StringFlag{Name: "ssh", Value: "ssh", Usage: "the OpenSSH client to run"},
			&cli.DurationFlag{Name: "interval", Value: 3 * time.Second, Usage: "time between /readyz probes"},
			&cli.DurationFlag{Name: "wake-timeout", Value: 15 * time.Minute, Usage: "with --service: how long a request to a sleeping service is held while the tunnel wakes it (0: answer 503 at once)"},
			&cli.StringFlag{Name: "remote-agent", Value: "llm-agent", Usage: "the llm-agent that wakes a service, on the login host"},
		},
		Action: func(c *cli.Context) error {
			if err := oneArgument(c, "job"); err != nil {
				return err
			}
			if c.Duration("interval") < 100*time.Millisecond {
				return usageErrorf("--interval %s is too short; give at least 100ms", c.Duration("interval"))
			}
			o := tunnel.Options{
				Job: c.Args().First(), Service: c.String("service"), Login: c.String("login"),
				SSH: c.String("ssh"), SSHOptions: c.StringSlice("ssh-option"), LocalPort: c.Int("local-port"),
				FetchKey: c.Bool("fetch-key"), KeyFile: c.String("key-file"), Interval: c.Duration("interval"),
				Home: os.Getenv("HOME"), Out: c.App.Writer, Terminal: isTerminal(c.App.Writer),
				WakeTimeout: c.Duration("wake-timeout"),
			}
			if c.IsSet("remote-agent") || o.Login != "" {
				o.Agent = c.String("remote-agent")
			}
			if o.KeyFile != "" && !o.FetchKey {
				return usageErrorf("--key-file is where --fetch-key writes the key; give --fetch-key too")
			}
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return tunnel.Run(ctx, o)
		},
	}
}

// isTerminal says whether w is a terminal, where a status line can be redrawn in place.
func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// oneArgument refuses more than one argument; flags after it are a common slip (they must come
// first), so it says so.
func oneArgument(c *cli.Context, what string) error {
	if c.NArg() <= 1 {
		return nil
	}
	for _, a := range c.Args().Slice()[1:] {
		if strings.HasPrefix(a, "-") {
			return usageErrorf("%s: options go before the %s (llm-agent %s [options] %s), got %q after it", c.Command.Name, what, c.Command.Name, strings.ToUpper(what), a)
		}
	}
	return usageErrorf("%s takes one %s, not %d arguments", c.Command.Name, what, c.NArg())
}
