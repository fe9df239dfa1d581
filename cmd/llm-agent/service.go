package main

// The commands of a service, an endpoint that outlives its jobs: stop --service ends its chain.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/slurm"
)

func serviceFlag() cli.Flag {
	return &cli.StringFlag{Name: "service", Usage: "a service's name instead of a job (~/.llm-agent/services/NAME)"}
}

// serviceConnectionPath is the service's file, which must exist.
func serviceConnectionPath(name string) (string, error) {
	if err := jobfiles.CheckServiceName(name); err != nil {
		return "", usageError{err}
	}
	path := filepath.Join(jobfiles.ServiceDir(os.Getenv("HOME"), name), jobfiles.ConnectionFile)
	if _, err := os.Stat(path); err != nil {
		return "", usageErrorf("no service %q: %v", name, err)
	}
	return path, nil
}

func stopCommand() *cli.Command {
	return &cli.Command{
		Name:         "stop",
		OnUsageError: onUsageError,
		Usage:        "end a service on purpose: cancel its job and its queued successor, and wait until none is left",
		UsageText:    "llm-agent stop --service NAME [--wait 2m]",
		Description: "Marks the service's chain as ended in its file, so that no job queues a successor any more, " +
			"then cancels (scancel) the job that serves and the successor in the queue. The job drains as on any " +
			"scancel. It waits until squeue lists neither, and exits 1 when --wait passes first.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "service", Required: true, Usage: "the service's name"},
			&cli.DurationFlag{Name: "wait", Value: 2 * time.Minute, Usage: "how long to wait for the jobs to leave the queue"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usageErrorf("stop takes no arguments; give --service NAME")
			}
			path, err := serviceConnectionPath(c.String("service"))
			if err != nil {
				return err
			}
			return stopService(c.Context, c.App.Writer, filepath.Dir(path), c.Duration("wait"))
		},
	}
}

// stopService ends the chain under the service's lock, then cancels its jobs and waits for
// them to leave the queue.
func stopService(ctx context.Context, out interface{ Write([]byte) (int, error) }, dir string, wait time.Duration) error {
	var ids []string
	_, err := jobfiles.UpdateService(dir, func(f *jobfiles.ServiceFile) error {
		info := &f.Service
		info.Ended = true
		info.State, info.Reason = jobfiles.ServiceStopping, "llm-agent stop --service"
		// Every job of the service that has not ended: the one serving, and one still handing
		// over to it.
		for _, j := range info.Jobs {
			if j.Ended == nil {
				ids = append(ids, j.JobID)
			}
		}
		if n := info.Successor; n != nil && n.JobID != "" && !slices.Contains(ids, n.JobID) {
			ids = append(ids, n.JobID)
			n.State, n.Reason = "cancelled", "llm-agent stop --service"
		}
		for _, x := range info.Extras { // added under load
			if !slices.Contains(ids, x.JobID) {
				ids = append(ids, x.JobID)
			}
		}
		info.Extras = nil
		if w := info.Waking; w != nil && !slices.Contains(ids, w.JobID) {
			ids = append(ids, w.JobID) // queued by a wake, not serving yet
			info.Waking = nil
		}
		if len(ids) == 0 {
			info.State = jobfiles.ServiceStopped
		}
		return nil
	})
	if err != nil {
		return err
	}
	// A job that ended without a word (killed) stays in the history unended: only those
	// Slurm still has are cancelled.
	ids = slices.DeleteFunc(ids, func(id string) bool {
		q, err := slurm.Queue(ctx, id)
		return err == nil && q.Ended()
	})
	if len(ids) > 0 {
		fmt.Fprintf(out, "cancelling job(s) %s\n", strings.Join(ids, ", "))
		if err := slurm.Cancel(ctx, ids...); err != nil {
			return err
		}
	}
	if err := awaitLeftQueue(ctx, ids, wait); err != nil {
		return err
	}
	_, err = jobfiles.UpdateService(dir, func(f *jobfiles.ServiceFile) error {
		f.Service.State = jobfiles.ServiceStopped
		return nil
	})
	fmt.Fprintf(out, "service %s stopped; nothing of it is left in the queue\n", filepath.Base(dir))
	return err
}

// awaitLeftQueue waits, up to wait in all, until Slurm no longer has any of the jobs ids.
func awaitLeftQueue(ctx context.Context, ids []string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for _, id := range ids {
		for {
			q, err := slurm.Queue(ctx, id)
			if err == nil && q.Ended() {
				break
			}
			if time.Now().After(deadline) {
				return cli.Exit(fmt.Sprintf("llm-agent: job %s is still in the queue after %s", id, wait), 1)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Second):
			}
		}
	}
	return nil
}
