package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/lifecycle"
	"github.com/llm-agent/llm-agent/agent/metrics"
	"github.com/llm-agent/llm-agent/agent/plan"
	"github.com/llm-agent/llm-agent/agent/securefs"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/model"
)

// The model's preparation, before any engine starts. With --stage-dir every node copies its
// model to node-local disk, hashing it in the same pass. Otherwise, with verification on, the
// nodes share the hashing of the job's models, each reading its share of the files from the
// shared filesystem. Each node publishes its report in the state directory (models/HOST.json);
// the head waits for every node's, with a deadline, decides, records what verified, and
// publishes its verdict (models/verdict.json), which the workers that start engines of their
// own wait for.

// prepDirName is the state directory's folder of the preparation's files.
const prepDirName = "models"

// prepReport is one node's word on the preparation.
type prepReport struct {
	Host string `json:"host"`
	// Err is why this node's part failed.
	Err string `json:"error,omitempty"`
	// Shares are this node's share of each model's verification, in the job's order.
	Shares []model.Report `json:"shares,omitempty"`
	// Staged is this node's copy of its model.
	Staged *stagedReport `json:"staged,omitempty"`
}

type stagedReport struct {
	Dir     string  `json:"dir"`
	Files   int     `json:"files"`
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
	Reused  bool    `json:"reused"`
}

// resolvedModel is the local directory of a model given as a path or as an id in the
// Hugging Face cache; ok is false for an id the cache does not hold, which vLLM downloads.
func (a *agent) resolvedModel(m string) (string, bool) {
	dir, err := plan.ResolveModel(m, a.deps.Getenv("HF_HOME"), a.deps.Getenv("HOME"))
	return dir, err == nil
}

// jobModelDirs are the local directories of the job's models, in the job's order.
func (a *agent) jobModelDirs() []string {
	models := []string{a.cfg.Model}
	if len(a.models) > 0 {
		models = nil
		for _, p := range a.models {
			models = append(models, p.Model)
		}
	}
	var dirs []string
	for _, m := range models {
		if dir, ok := a.resolvedModel(m); ok {
			dirs = append(dirs, dir)
		}
	}
	return dirs
}

// verifiable tells whether dir is verified under --verify-model: auto verifies a model that
// has something to verify against; on refuses one that has not.
func (a *agent) verifiable(dir string) (bool, error) {
	if a.cfg.VerifyModel == config.VerifyOff {
		return false, nil
	}
	_, _, err := model.Expected(dir)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, model.ErrNoSource) && a.cfg.VerifyModel == config.VerifyAuto:
		return false, nil
	case errors.Is(err, model.ErrNoSource):
		return false, fmt.Errorf("%w: --verify-model on: %w", ErrBadInput, err)
	}
	return false, fmt.Errorf("%w: %w", ErrBadInput, err)
}

// verifyDirs are the directories of the job's models that --verify-model verifies, in the
// job's order: each node's report lists its share of each, in this order.
func (a *agent) verifyDirs() ([]string, error) {
	var dirs []string
	for _, dir := range a.jobModelDirs() {
		ok, err := a.verifiable(dir)
		if err != nil {
			return nil, err
		}
		if ok {
			dirs = append(dirs, dir)
		}
	}
	return dirs, nil
}

// prepares tells whether this job prepares its model before the engine starts.
func (a *agent) prepares() bool {
	dirs, err := a.verifyDirs()
	return a.cfg.StageDir != "" || len(dirs) > 0 || err != nil
}

// prepareModel does this node's part of the preparation and publishes its report; with
// staging, the engine then loads the copy. The error is this node's failure, also reported.
func (a *agent) prepareModel(ctx context.Context, progress func(metrics.Prep, string)) error {
	// The agent keeps to a few Go processors while it serves; the hashing, which is over before
	// the engine starts, uses every core the job gives this node, unless GOMAXPROCS was set.
	if a.deps.Getenv("GOMAXPROCS") == "" && runtime.NumCPU() > runtime.GOMAXPROCS(0) {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(runtime.NumCPU()))
	}
	rep := prepReport{Host: a.alloc.Hostname()}
	err := a.prepareOwnPart(ctx, &rep, progress)
	if err != nil {
		rep.Err = err.Error()
	}
	if perr := jobfiles.WriteJSONAtomic(a.prepPath(rep.Host), rep, 0o600); perr != nil && err == nil {
		err = fmt.Errorf("publish the model's preparation: %w", perr)
	}
	return err
}

func (a *agent) prepPath(name string) string {
	return filepath.Join(a.stateDir, prepDirName, name+".json")
}

// prepareOwnPart stages this node's model, or verifies this node's share of the job's models.
func (a *agent) prepareOwnPart(ctx context.Context, rep *prepReport, progress func(metrics.Prep, string)) error {
	// Like nodes/ and logs/: the user's own, closed to others, who could plant reports in it.
	if err := securefs.EnsureDir(filepath.Join(a.stateDir, prepDirName)); err != nil {
		return err
	}
	if a.cfg.StageDir != "" {
		return a.stageModel(ctx, rep, progress)
	}
	dirs, err := a.verifyDirs()
	if err != nil {
		return err
	}
	share := model.Share{Index: a.alloc.NodeID, Of: len(a.alloc.Nodes)}
	for _, dir := range dirs {
		var done atomic.Int64
		stop := a.watchPrep(metrics.PrepVerify, &done, progress)
		r, err := model.Verify(ctx, dir, model.Options{Share: share, Record: model.RecordPath(a.deps.Getenv("HOME"), dir), Progress: &done})
		var size int64
		for _, f := range r.Files {
			size += f.Size
		}
		stop(size)
		if err != nil && !errors.Is(err, model.ErrMismatch) {
			return err
		}
		rep.Shares = append(rep.Shares, r)
		a.log.Info("verified this node's share of the model", "model", dir, "share", fmt.Sprintf("%d of %d", share.Index+1, share.Of),
			"files", len(r.Files), "hashed", len(r.Files)-r.Skipped, "unchanged", r.Skipped, "bytes", r.Hashed, "hashed_files", hashedNames(r))
	}
	return nil
}

// hashedNames lists the files a share read, for the log: each file of the model is read by
// exactly one node.
func hashedNames(r model.Report) string {
	var names []string
	for _, f := range r.Files {
		if !f.Cached {
			names = append(names, f.Name)
		}
	}
	return strings.Join(names, ",")
}

// stageModel copies this node's model to the stage directory; the engine loads the copy.
func (a *agent) stageModel(ctx context.Context, rep *prepReport, progress func(metrics.Prep, string)) error {
	src, ok := a.resolvedModel(a.cfg.Model)
	if !ok {
		return fmt.Errorf("%w: --stage-dir: %q is neither a directory nor in the Hugging Face cache; download it on the login node first (README: Models)", ErrBadInput, a.cfg.Model)
	}
	verify, err := a.verifiable(src)
	if err != nil {
		return err
	}
	root, err := model.StageRoot(a.cfg.StageDir)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadInput, err)
	}
	dst := model.StagePath(root, src)
	var done atomic.Int64
	start := a.deps.Clock.Now()
	stop := a.watchPrep(metrics.PrepStage, &done, progress)
	st, err := model.Stage(ctx, src, dst, model.StageOptions{Verify: verify, Progress: &done})
	stop(st.Total)
	took := a.deps.Clock.Now().Sub(start)
	if err != nil {
		if errors.Is(err, model.ErrStage) || errors.Is(err, model.ErrMismatch) || errors.Is(err, model.ErrNoSource) {
			err = fmt.Errorf("%w: %w", ErrBadInput, err)
		}
		return fmt.Errorf("stage %s to %s: %w", src, dst, err)
	}
	a.staged = &st
	rep.Staged = &stagedReport{Dir: dst, Files: len(st.Files), Bytes: st.Total, Seconds: took.Seconds(), Reused: st.Reused}
	if st.Reused {
		a.log.Info("staged copy of the model reused: unchanged since it was made and verified", "dir", dst, "files", len(st.Files), "bytes", st.Total)
	} else {
		a.log.Info("model staged", "from", src, "to", dst, "files", len(st.Files), "verified", verify,
			"bytes", st.Total, "seconds", fmt.Sprintf("%.2f", took.Seconds()), "rate", rate(st.Hashed, took))
	}
	return nil
}

// engineModel is what the engine loads: the staged copy once made (under the model's own
// served name, which the configuration keeps), else the model the configuration names.
func (a *agent) engineModel() string {
	if a.staged != nil {
		return a.staged.Dir
	}
	return a.cfg.Model
}

// unstage ends this node's use of its staged copy when the job ends, and removes it unless
// --stage-keep or another job on the node still uses it.
func (a *agent) unstage() {
	if a.staged == nil {
		return
	}
	removed, err := a.staged.Release(!a.cfg.StageKeep)
	switch {
	case err != nil:
		a.log.Warn("cannot remove the staged copy of the model", "dir", a.staged.Dir, "error", err)
	case removed:
		a.log.Info("staged copy of the model removed", "dir", a.staged.Dir)
	case !a.cfg.StageKeep:
		a.log.Info("staged copy of the model kept: another job on the node, or a node sharing the stage directory, still uses it", "dir", a.staged.Dir)
	}
}

// watchPrep reports a phase's progress every prepProgressInterval, to the metrics and to
// progress, until the returned stop is called, which reports it once more with the phase's
// size.
func (a *agent) watchPrep(phase string, done *atomic.Int64, progress func(metrics.Prep, string)) (stop func(total int64)) {
	start := a.deps.Clock.Now()
	var total int64
	report := func() {
		p := metrics.Prep{Bytes: done.Load(), Total: total, Seconds: a.deps.Clock.Now().Sub(start).Seconds()}
		a.state.SetPrep(phase, p)
		if progress != nil {
			progress(p, phase)
		}
	}
	stopWatch := lifecycle.Background(context.Background(), func(ctx context.Context) {
		for {
			select {
			case <-ctx.Done():
				return
			case <-a.deps.Clock.After(prepProgressInterval):
				report()
				a.log.Info("preparing the model", "phase", phase, "bytes", done.Load(), "rate", rate(done.Load(), a.deps.Clock.Now().Sub(start)))
			}
		}
	})
	return func(size int64) {
		stopWatch()
		total = size
		report()
	}
}

// rate is a byte rate for the log.
func rate(bytes int64, took time.Duration) string {
	if took <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f MiB/s", float64(bytes)/(1<<20)/took.Seconds())
}

// environ is the environment of the agent's children: its own, and the hub's offline mode
// when the model resolved to a local directory, unless the user set it.
func (a *agent) environ() []string {
	env := os.Environ()
	if a.offline && a.deps.Getenv("HF_HUB_OFFLINE") == "" {
		env = append(env, "HF_HUB_OFFLINE=1")
	}
	return env
}

// checkOffline decides whether the engine runs offline: when this node's model resolves to a
// local directory, nothing needs the hub, and a compute node often cannot reach it.
func (a *agent) checkOffline() {
	if _, ok := a.resolvedModel(a.cfg.Model); ok {
		a.offline = true
		return
	}
	if a.alloc.IsHead() {
		a.log.Warn("the model is not in the local Hugging Face cache: vLLM will download it, which a compute node may not be able to; download it on the login node first (README: Models)",
			"model", a.cfg.Model, "hf_home", a.deps.Getenv("HF_HOME"))
	}
}

// prepareWorkerModel is a worker's part of the preparation; a worker that starts engines of
// its own (replicas) then waits for the head's verdict, which covers the files other nodes
// hashed.
func (a *agent) prepareWorkerModel(ctx context.Context, engines bool) error {
	if err := a.prepareModel(ctx, nil); err != nil {
		return err
	}
	if !engines {
		return nil
	}
	return a.awaitVerdict(ctx)
}
