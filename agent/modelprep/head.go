package modelprep

import (
	"os"

	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/node"

	"github.com/llm-agent/llm-agent/healthcheck"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/model"
)

// The head's side of the model's preparation (modelprep.go): it waits for every node's
// report, decides, and publishes its verdict, which the workers that start engines wait for.

// Verdict is the head's decision, once every node has reported.
type Verdict struct {
	OK     bool   `json:"ok"`
	Reason string `json:"reason,omitempty"`
}

// Decide, on the head, waits for every node's report within --model-timeout, then
// decides: a file that differs, on any node, fails the job naming it. It records the verified
// files, so that the next job reads none of the unchanged ones, and publishes the verdict.
func Decide(ctx context.Context, e *node.Env) error {
	err := decidePreparation(ctx, e)
	v := Verdict{OK: err == nil}
	if err != nil {
		v.Reason = err.Error()
	}
	if werr := jobfiles.WriteJSONAtomic(prepPath(e, "verdict"), v, 0o600); werr != nil && err == nil {
		err = werr
	}
	return err
}

func decidePreparation(ctx context.Context, e *node.Env) error {
	reports, err := collectPrepReports(ctx, e)
	if err != nil {
		return err
	}
	for _, host := range e.Alloc.Nodes {
		if r := reports[host]; r.Err != "" {
			return fmt.Errorf("%w: %s: %s", config.ErrBadInput, host, r.Err)
		}
	}
	if e.Cfg.StageDir != "" {
		return nil
	}
	dirs, err := verifyDirs(e)
	if err != nil {
		return err
	}
	for i, dir := range dirs {
		var shares []model.Report
		for _, host := range e.Alloc.Nodes {
			if s := reports[host].Shares; i < len(s) {
				shares = append(shares, s[i])
			}
		}
		whole, err := model.Combine(dir, shares)
		if err != nil {
			if errors.Is(err, model.ErrMismatch) {
				err = fmt.Errorf("%w: %w", config.ErrBadInput, err)
			}
			return fmt.Errorf("model %s: %w", dir, err)
		}
		if err := model.SaveRecord(model.RecordPath(e.Getenv("HOME"), dir), whole); err != nil {
			e.Log.Warn("cannot record the verified model", "model", dir, "error", err)
		}
		e.Log.Info("model verified", "model", dir, "source", whole.Source, "files", len(whole.Files),
			"nodes", len(e.Alloc.Nodes), "bytes_hashed", whole.Hashed, "unchanged", whole.Skipped)
	}
	return nil
}

// collectPrepReports waits, within --model-timeout, for every node's report on its part of the
// preparation.
func collectPrepReports(ctx context.Context, e *node.Env) (map[string]Report, error) {
	reports := map[string]Report{}
	var missing []string
	wctx, cancel := context.WithTimeout(ctx, e.Cfg.ModelTimeout)
	defer cancel()
	err := healthcheck.WaitReady(wctx, e.Clock, prepPollInterval, func(context.Context) error {
		missing = missing[:0]
		for _, host := range e.Alloc.Nodes {
			if _, ok := reports[host]; ok {
				continue
			}
			var r Report
			if err := jobfiles.ReadJSON(prepPath(e, host), &r); err == nil {
				reports[host] = r
				continue
			}
			missing = append(missing, host)
		}
		if len(missing) > 0 {
			return fmt.Errorf("%d of %d nodes reported", len(e.Alloc.Nodes)-len(missing), len(e.Alloc.Nodes))
		}
		return nil
	})
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if err != nil {
		return nil, fmt.Errorf("not every node prepared the model within --model-timeout %s: %s; see their logs in %s",
			e.Cfg.ModelTimeout, strings.Join(missing, ", "), filepath.Join(e.StateDir, "logs"))
	}
	return reports, nil
}

// awaitVerdict, on a worker that starts engines of its own, waits for the head's verdict on
// the preparation.
func awaitVerdict(ctx context.Context, e *node.Env) error {
	var v Verdict
	wctx, cancel := context.WithTimeout(ctx, e.Cfg.ModelTimeout+e.Cfg.RendezvousTimeout)
	defer cancel()
	err := healthcheck.WaitReady(wctx, e.Clock, prepPollInterval, func(context.Context) error {
		return jobfiles.ReadJSON(prepPath(e, "verdict"), &v)
	})
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case err != nil:
		return fmt.Errorf("the head decided nothing on the model's preparation within %s", e.Cfg.ModelTimeout+e.Cfg.RendezvousTimeout)
	case !v.OK:
		return fmt.Errorf("the head failed the model's preparation: %s", v.Reason)
	}
	return nil
}

// Fail publishes the head's own failure of its part as the verdict, so that no worker waits
// for one that cannot come.
func Fail(e *node.Env, err error) {
	_ = jobfiles.WriteJSONAtomic(prepPath(e, "verdict"), Verdict{Reason: err.Error()}, 0o600)
}

// Reset removes the last launch's reports on the preparation, before any worker can read this
// launch's rendezvous.
func Reset(stateDir string) error {
	return os.RemoveAll(filepath.Join(stateDir, DirName))
}
