//go:build cgo

package main

// llm-agent service wake NAME: queue a sleeping service's job again (--idle-release), and,
// with --wait, follow it until it serves.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/llm-agent/llm-agent/agent/securefs"
	"github.com/llm-agent/llm-agent/agent/service"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/slurm"
)

func serviceCommand() *cli.Command {
	return &cli.Command{
		Name:         "service",
		OnUsageError: onUsageError,
		Usage:        "act on a service, an endpoint that outlives its jobs",
		Subcommands: []*cli.Command{{
			Name:         "wake",
			OnUsageError: onUsageError,
			Usage:        "queue a sleeping service's job again (--idle-release), and with --wait follow it until it serves",
			UsageText:    "llm-agent service wake [--wait 15m] NAME",
			ArgsUsage:    "NAME",
			Description: "A service that slept saved its job's batch script and sbatch options in its folder; wake submits " +
				"them again. A second wake while that job is queued or starting queues nothing more, and a wake of a " +
				"service that serves does nothing. With --wait it prints the service's state as it changes (waking: " +
				"queued; starting: running, loading the model; serving) and exits 0 once it serves, 1 when --wait passes first.",
			Flags: []cli.Flag{
				&cli.DurationFlag{Name: "wait", Usage: "follow the job until the service serves, at most this long (0: do not wait)"},
				&cli.StringFlag{Name: "by", Value: "llm-agent service wake", Usage: "who wakes it, as the service's file records it"},
			},
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return usageErrorf("service wake takes one argument, the service's name, after the options (service wake --wait 15m NAME)")
				}
				path, err := serviceConnectionPath(c.Args().First())
				if err != nil {
					return err
				}
				return wakeService(c.Context, c.App.Writer, filepath.Dir(path), c.String("by"), c.Duration("wait"))
			},
		}},
	}
}

// wakeService wakes the service in dir and, with wait, follows it until it serves.
func wakeService(ctx context.Context, out io.Writer, dir, by string, wait time.Duration) error {
	name := filepath.Base(dir)
	w, err := service.Wake(ctx, dir, slurm.Commands{}, os.Environ(), by, time.Now())
	if err != nil {
		if errors.Is(err, service.ErrCannotWake) || errors.Is(err, securefs.ErrUnsafe) {
			return usageError{err}
		}
		return err
	}
	switch {
	case w.Queued:
		fmt.Fprintf(out, "service %s: job %s queued to wake it\n", name, w.JobID)
	default:
		fmt.Fprintf(out, "service %s is %s (job %s); nothing queued\n", name, w.State, w.JobID)
	}
	if wait <= 0 {
		return nil
	}
	return followWake(ctx, out, dir, wait)
}

// followWake prints the service's state as it changes until it serves, within wait.
func followWake(ctx context.Context, out io.Writer, dir string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	last := ""
	for {
		f, err := jobfiles.ReadService(dir)
		if err == nil {
			line := wakeProgress(ctx, f.Service)
			if line != last {
				fmt.Fprintf(out, "%s %s\n", time.Now().Format("15:04:05"), line)
				last = line
			}
			switch {
			case f.Service.State == jobfiles.ServiceServing:
				return nil
			case f.Service.Ended:
				return cli.Exit(fmt.Sprintf("llm-agent: the service ended while waking: %s", f.Service.Reason), 1)
			}
		}
		if time.Now().After(deadline) {
			return cli.Exit(fmt.Sprintf("llm-agent: the service does not serve after %s; it is %s", wait, last), 1)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// wakeProgress is the service's state as a waking client shows it: queued (with Slurm's reason
// while its job waits), starting (the job runs and loads the model), serving.
func wakeProgress(ctx context.Context, s jobfiles.ServiceInfo) string {
	if w := s.Waking; w != nil && s.State == jobfiles.ServiceWaking {
		if q, err := slurm.Queue(ctx, w.JobID); err == nil && q.Pending() {
			line := fmt.Sprintf("queued: job %s is %s", w.JobID, strings.ToLower(q.State))
			if q.Reason != "" && q.Reason != "None" {
				line += " (" + q.Reason + ")"
			}
			return line
		}
	}
	line := s.State
	if s.Reason != "" {
		line += ": " + s.Reason
	}
	return line
}
