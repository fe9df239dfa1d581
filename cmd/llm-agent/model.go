//go:build cgo

package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/llm-agent/llm-agent/agent/plan"
	"github.com/llm-agent/llm-agent/model"
)

func modelCommand() *cli.Command {
	workers := &cli.IntFlag{Name: "workers", Usage: "files hashed at once", DefaultText: "the CPUs this process may use"}
	return &cli.Command{
		Name:         "model",
		OnUsageError: onUsageError,
		Usage:        "verify a model's files, or write a SHA256SUMS manifest for a model directory",
		Subcommands: []*cli.Command{
			{
				Name: "verify", OnUsageError: onUsageError, ArgsUsage: "MODEL",
				Usage: "check every file of MODEL (a directory, a Hugging Face cache snapshot, or an id in the cache under $HF_HOME) and exit 1 naming any that differs",
				Description: "A Hugging Face cache snapshot is checked against the cache's own content addresses: each blob is named " +
					"by the SHA-256 of a large (LFS) file, or the git blob hash of a small one. A plain directory is checked against " +
					"its SHA256SUMS (sha256sum's format; llm-agent model manifest writes one). Files unchanged since they last " +
					"verified (size, modification and change times, inode) are not read again: the record is in ~/.llm-agent/verified.",
				Flags:  []cli.Flag{workers, &cli.BoolFlag{Name: "no-record", Usage: "read every file, and keep no record"}},
				Action: modelVerifyAction,
			},
			{
				Name: "manifest", OnUsageError: onUsageError, ArgsUsage: "DIR",
				Usage:  "hash every file of DIR and write DIR/SHA256SUMS, which sha256sum -c and llm-agent model verify accept",
				Flags:  []cli.Flag{workers},
				Action: modelManifestAction,
			},
		},
	}
}

// modelVerifyAction is `llm-agent model verify MODEL`.
func modelVerifyAction(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageErrorf("model verify takes one model, not %d arguments", c.NArg())
	}
	dir, err := plan.ResolveModel(c.Args().First(), os.Getenv("HF_HOME"), os.Getenv("HOME"))
	if err != nil {
		return usageError{err}
	}
	o := model.Options{Workers: c.Int("workers")}
	if !c.Bool("no-record") {
		o.Record = model.RecordPath(os.Getenv("HOME"), dir)
	}
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	start := time.Now()
	rep, err := model.Verify(ctx, dir, o)
	if errors.Is(err, model.ErrNoSource) || errors.Is(err, model.ErrManifest) {
		return usageError{err}
	}
	writeVerifyReport(c, rep, time.Since(start))
	return err
}

// modelManifestAction is `llm-agent model manifest DIR`.
func modelManifestAction(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageErrorf("model manifest takes one directory, not %d arguments", c.NArg())
	}
	dir := c.Args().First()
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return usageErrorf("%s is not a directory", dir)
	}
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	entries, err := model.WriteManifest(ctx, dir, c.Int("workers"))
	if errors.Is(err, model.ErrNoSource) {
		return usageError{err}
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "wrote %s/%s: %d files\n", dir, model.ManifestName, len(entries))
	return nil
}

// writeVerifyReport prints each file and a summary.
func writeVerifyReport(c *cli.Context, rep model.Report, took time.Duration) {
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	for _, f := range rep.Files {
		state := "ok"
		switch {
		case f.Err != "":
			state = "ERROR: " + f.Err
		case !f.OK:
			state = fmt.Sprintf("MISMATCH: %s %s, expected %s", f.Algo, f.Got, f.Want)
		case f.Cached:
			state = "ok (unchanged since verified)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\n", f.Name, f.Size, state)
	}
	tw.Flush()
	rate := float64(rep.Hashed) / 1e6 / max(took.Seconds(), 1e-9)
	fmt.Fprintf(c.App.Writer, "%s: %d files against %s, %d failed; %d MB read in %s (%.0f MB/s), %d unchanged since verified\n",
		rep.Dir, len(rep.Files), rep.Source, len(rep.Failed()), rep.Hashed/1_000_000, took.Round(time.Millisecond), rate, rep.Skipped)
}
