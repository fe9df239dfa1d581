package agent

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/llm-agent/llm-agent/healthcheck"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/model"
)

// The head's side of the model's preparation (modelprep.go): it waits for every node's
// report, decides, and publishes its verdict, which the workers that start engines wait for.

// prepVerdict is the head's decision, once every node has reported.
type prepVerdict struct {
	OK     bool   `json:"ok"`
	Reason string `json:"reason,omitempty"`
}

// awaitPreparation, on the head, waits for every node's report within --model-timeout, then
// decides: a file that differs, on any node, fails the job naming it. It records the verified
// files, so that the next job reads none of the unchanged ones, and publishes the verdict.
func (h *head) awaitPreparation(ctx context.Context) error {
	a := h.agent
	err := h.decidePreparation(ctx)
	v := prepVerdict{OK: err == nil}
	if err != nil {
		v.Reason = err.Error()
	}
	if werr := jobfiles.WriteJSONAtomic(a.prepPath("verdict"), v, 0o600); werr != nil && err == nil {
		err = werr
	}
	return err
}

func (h *head) decidePreparation(ctx context.Context) error {
	a := h.agent
	reports, err := h.collectPrepReports(ctx)
	if err != nil {
		return err
	}
	for _, host := range a.alloc.Nodes {
		if r := reports[host]; r.Err != "" {
			return fmt.Errorf("%w: %s: %s", ErrBadInput, host, r.Err)
		}
	}
	if a.cfg.StageDir != "" {
		return nil
	}
	dirs, err := a.verifyDirs()
	if err != nil {
		return err
	}
	for i, dir := range dirs {
		var shares []model.Report
		for _, host := range a.alloc.Nodes {
			if s := reports[host].Shares; i < len(s) {
				shares = append(shares, s[i])
			}
		}
		whole, err := model.Combine(dir, shares)
		if err != nil {
			if errors.Is(err, model.ErrMismatch) {
				err = fmt.Errorf("%w: %w", ErrBadInput, err)
			}
			return fmt.Errorf("model %s: %w", dir, err)
		}
		if err := model.SaveRecord(model.RecordPath(a.deps.Getenv("HOME"), dir), whole); err != nil {
			a.log.Warn("cannot record the verified model", "model", dir, "error", err)
		}
		a.log.Info("model verified", "model", dir, "source", whole.Source, "files", len(whole.Files),
			"nodes", len(a.alloc.Nodes), "bytes_hashed", whole.Hashed, "unchanged", whole.Skipped)
	}
	return nil
}

// collectPrepReports waits, within --model-timeout, for every node's report on its part of the
// preparation.
func (h *head) collectPrepReports(ctx context.Context) (map[string]prepReport, error) {
	a := h.agent
	reports := map[string]prepReport{}
	var missing []string
	wctx, cancel := context.WithTimeout(ctx, a.cfg.ModelTimeout)
	defer cancel()
	err := healthcheck.WaitReady(wctx, a.deps.Clock, prepPollInterval, func(context.Context) error {
		missing = missing[:0]
		for _, host := range a.alloc.Nodes {
			if _, ok := reports[host]; ok {
				continue
			}
			var r prepReport
			if err := jobfiles.ReadJSON(a.prepPath(host), &r); err == nil {
				reports[host] = r
				continue
			}
			missing = append(missing, host)
		}
		if len(missing) > 0 {
			return fmt.Errorf("%d of %d nodes reported", len(a.alloc.Nodes)-len(missing), len(a.alloc.Nodes))
		}
		return nil
	})
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if err != nil {
		return nil, fmt.Errorf("not every node prepared the model within --model-timeout %s: %s; see their logs in %s",
			a.cfg.ModelTimeout, strings.Join(missing, ", "), filepath.Join(a.stateDir, "logs"))
	}
	return reports, nil
}

// awaitVerdict, on a worker that starts engines of its own, waits for the head's verdict on
// the preparation.
func (a *agent) awaitVerdict(ctx context.Context) error {
	var v prepVerdict
	wctx, cancel := context.WithTimeout(ctx, a.cfg.ModelTimeout+a.cfg.RendezvousTimeout)
	defer cancel()
	err := healthcheck.WaitReady(wctx, a.deps.Clock, prepPollInterval, func(context.Context) error {
		return jobfiles.ReadJSON(a.prepPath("verdict"), &v)
	})
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case err != nil:
		return fmt.Errorf("the head decided nothing on the model's preparation within %s", a.cfg.ModelTimeout+a.cfg.RendezvousTimeout)
	case !v.OK:
		return fmt.Errorf("the head failed the model's preparation: %s", v.Reason)
	}
	return nil
}
