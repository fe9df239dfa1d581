package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/llm-agent/llm-agent/slurm"
)

// usageError marks command-line mistakes; they exit 2 like other input to fix.
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

func usageErrorf(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// onUsageError turns a flag the parser rejects into a usage error (exit 2).
func onUsageError(_ *cli.Context, err error, _ bool) error { return usageError{err} }

func newApp() *cli.App {
	return &cli.App{
		Name:                      "llm-agent",
		Usage:                     "turn a Slurm allocation into a supervised, monitored OpenAI-compatible LLM endpoint",
		Version:                   version,
		DisableSliceFlagSeparator: true,
		OnUsageError:              onUsageError,
		Action:                    rootAction,
		Commands:                  append(nodeCommands(), clientCommands()...),
	}
}

func hostnamesCommand() *cli.Command {
	return &cli.Command{
		Name:         "hostnames",
		OnUsageError: onUsageError,
		Usage:        "expand a Slurm hostlist, one host per line, like scontrol show hostnames",
		ArgsUsage:    "EXPRESSION (default: $SLURM_JOB_NODELIST)",
		Action: func(c *cli.Context) error {
			expr := c.Args().First()
			if c.Args().Len() > 1 {
				return usageErrorf("hostnames takes one expression; quote it if it has spaces")
			}
			if expr == "" {
				expr = os.Getenv("SLURM_JOB_NODELIST")
			}
			if expr == "" {
				return usageErrorf("give a hostlist expression, such as node[01-04]")
			}
			hosts, err := slurm.ExpandHostlist(expr)
			if err != nil {
				return cli.Exit("llm-agent: "+err.Error(), 1)
			}
			w := bufio.NewWriter(c.App.Writer)
			for _, h := range hosts {
				w.WriteString(h)
				w.WriteByte('\n')
			}
			return w.Flush()
		},
	}
}

// rootAction shows the help without a command, and answers an unknown one with the list of
// commands, as a usage error (exit 2).
func rootAction(c *cli.Context) error {
	if c.NArg() == 0 {
		return cli.ShowAppHelp(c)
	}
	var names []string
	for _, cmd := range c.App.Commands {
		if !cmd.Hidden {
			names = append(names, cmd.Name)
		}
	}
	return usageErrorf("unknown command %q; the commands are %s (llm-agent help COMMAND)", c.Args().First(), strings.Join(names, ", "))
}

// writeReport prints a report as indented JSON with --json, else as its table.
func writeReport(c *cli.Context, r interface{ WriteTable(io.Writer) error }) error {
	if !c.Bool("json") {
		return r.WriteTable(c.App.Writer)
	}
	enc := json.NewEncoder(c.App.Writer)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}
