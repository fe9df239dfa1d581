// Package modelprep is the model's preparation, before any engine starts. With --stage-dir
// every node copies its model to node-local disk, hashing it in the same pass. Otherwise, with verification on, the
// nodes share the hashing of the job's models, each reading its share of the files from the
// shared filesystem. Each node publishes its report in the state directory (models/HOST.json);
// the head waits for every node's, with a deadline, decides, records what verified, and
// publishes its verdict (models/verdict.json), which the workers that start engines of their
// own wait for.
package modelprep

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/lifecycle"
	"github.com/llm-agent/llm-agent/agent/metrics"
	"github.com/llm-agent/llm-agent/agent/node"
	"github.com/llm-agent/llm-agent/agent/plan"
	"github.com/llm-agent/llm-agent/agent/securefs"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/model"
)

// DirName is the state directory's folder of the preparation's files.
const DirName = "models"

// How often the head looks for the nodes' reports and a worker for the verdict, and how often
// the progress of a phase reaches the log and the metrics.
const (
	prepPollInterval     = 500 * time.Millisecond
	prepProgressInterval = 2 * time.Second
)

// Report is one node's word on the preparation.
type Report struct {
	Host string `json:"host"`
	// Err is why this node's part failed.
	Err string `json:"error,omitempty"`
	// Shares are this node's share of each model's verification, in the job's order.
	Shares []model.Report `json:"shares,omitempty"`
	// Staged is this node's copy of its model.
	Staged *StagedReport `json:"staged,omitempty"`
}

// StagedReport is a node's copy of its model, as its report tells it.
type StagedReport struct {
	Dir     string  `json:"dir"`
	Files   int     `json:"files"`
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
	Reused  bool    `json:"reused"`
}

// LocalDir is the local directory of a model given as a path or as an id in the Hugging Face
// cache; ok is false for an id the cache does not hold, which vLLM downloads.
func LocalDir(getenv func(string) string, m string) (string, bool) {
	dir, err := plan.ResolveModel(m, getenv("HF_HOME"), getenv("HOME"))
	return dir, err == nil
}

// jobModelDirs are the local directories of the job's models, in the job's order.
func jobModelDirs(e *node.Env) []string {
	models := []string{e.Cfg.Model}
	if len(e.Models) > 0 {
		models = nil
		for _, p := range e.Models {
			models = append(models, p.Model)
		}
	}
	var dirs []string
	for _, m := range models {
		if dir, ok := LocalDir(e.Getenv, m); ok {
			dirs = append(dirs, dir)
		}
	}
	return dirs
}

// verifiable tells whether dir is verified under --verify-model: auto verifies a model that
// has something to verify against; on refuses one that has not.
func verifiable(e *node.Env, dir string) (bool, error) {
	if e.Cfg.VerifyModel == config.VerifyOff {
		return false, nil
	}
	_, _, err := model.Expected(dir)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, model.ErrNoSource) && e.Cfg.VerifyModel == config.VerifyAuto:
		return false, nil
	case errors.Is(err, model.ErrNoSource):
		return false, fmt.Errorf("%w: --verify-model on: %w", config.ErrBadInput, err)
	}
	return false, fmt.Errorf("%w: %w", config.ErrBadInput, err)
}

// verifyDirs are the directories of the job's models that --verify-model verifies, in the
// job's order: each node's report lists its share of each, in this order.
func verifyDirs(e *node.Env) ([]string, error) {
	var dirs []string
	for _, dir := range jobModelDirs(e) {
		ok, err := verifiable(e, dir)
		if err != nil {
			return nil, err
		}
		if ok {
			dirs = append(dirs, dir)
		}
	}
	return dirs, nil
}

// Prepares tells whether this job prepares its model before the engine starts.
func Prepares(e *node.Env) bool {
	dirs, err := verifyDirs(e)
	return e.Cfg.StageDir != "" || len(dirs) > 0 || err != nil
}

// Node does this node's part of the preparation and publishes its report; with
// staging, the engine then loads the copy. The error is this node's failure, also reported.
func Node(ctx context.Context, e *node.Env, progress func(metrics.Prep, string)) error {
	// The agent keeps to a few Go processors while it serves; the hashing, which is over before
	// the engine starts, uses every core the job gives this node, unless GOMAXPROCS was set.
	if e.Getenv("GOMAXPROCS") == "" && runtime.NumCPU() > runtime.GOMAXPROCS(0) {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(runtime.NumCPU()))
	}
	rep := Report{Host: e.Alloc.Hostname()}
	err := prepareOwnPart(ctx, e, &rep, progress)
	if err != nil {
		rep.Err = err.Error()
	}
	if perr := jobfiles.WriteJSONAtomic(prepPath(e, rep.Host), rep, 0o600); perr != nil && err == nil {
		err = fmt.Errorf("publish the model's preparation: %w", perr)
	}
	return err
}

func prepPath(e *node.Env, name string) string {
	return filepath.Join(e.StateDir, DirName, name+".json")
}

// prepareOwnPart stages this node's model, or verifies this node's share of the job's models.
func prepareOwnPart(ctx context.Context, e *node.Env, rep *Report, progress func(metrics.Prep, string)) error {
	// Like nodes/ and logs/: the user's own, closed to others, who could plant reports in it.
	if err := securefs.EnsureDir(filepath.Join(e.StateDir, DirName)); err != nil {
		return err
	}
	if e.Cfg.StageDir != "" {
		return stageModel(ctx, e, rep, progress)
	}
	dirs, err := verifyDirs(e)
	if err != nil {
		return err
	}
	share := model.Share{Index: e.Alloc.NodeID, Of: len(e.Alloc.Nodes)}
	for _, dir := range dirs {
		var done atomic.Int64
		stop := watchPrep(e, metrics.PrepVerify, &done, progress)
		r, err := model.Verify(ctx, dir, model.Options{Share: share, Record: model.RecordPath(e.Getenv("HOME"), dir), Progress: &done})
		var size int64
		for _, f := range r.Files {
			size += f.Size
		}
		stop(size)
		if err != nil && !errors.Is(err, model.ErrMismatch) {
			return err
		}
		rep.Shares = append(rep.Shares, r)
		e.Log.Info("verified this node's share of the model", "model", dir, "share", fmt.Sprintf("%d of %d", share.Index+1, share.Of),
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
func stageModel(ctx context.Context, e *node.Env, rep *Report, progress func(metrics.Prep, string)) error {
	src, ok := LocalDir(e.Getenv, e.Cfg.Model)
	if !ok {
		return fmt.Errorf("%w: --stage-dir: %q is neither a directory nor in the Hugging Face cache; download it on the login node first (README: Models)", config.ErrBadInput, e.Cfg.Model)
	}
	verify, err := verifiable(e, src)
	if err != nil {
		return err
	}
	root, err := model.StageRoot(e.Cfg.StageDir)
	if err != nil {
		return fmt.Errorf("%w: %w", config.ErrBadInput, err)
	}
	dst := model.StagePath(root, src)
	var done atomic.Int64
	start := e.Clock.Now()
	stop := watchPrep(e, metrics.PrepStage, &done, progress)
	st, err := model.Stage(ctx, src, dst, model.StageOptions{Verify: verify, Progress: &done})
	stop(st.Total)
	took := e.Clock.Now().Sub(start)
	if err != nil {
		if errors.Is(err, model.ErrStage) || errors.Is(err, model.ErrMismatch) || errors.Is(err, model.ErrNoSource) {
			err = fmt.Errorf("%w: %w", config.ErrBadInput, err)
		}
		return fmt.Errorf("stage %s to %s: %w", src, dst, err)
	}
	e.SetStaged(&st)
	rep.Staged = &StagedReport{Dir: dst, Files: len(st.Files), Bytes: st.Total, Seconds: took.Seconds(), Reused: st.Reused}
	if st.Reused {
		e.Log.Info("staged copy of the model reused: unchanged since it was made and verified", "dir", dst, "files", len(st.Files), "bytes", st.Total)
	} else {
		e.Log.Info("model staged", "from", src, "to", dst, "files", len(st.Files), "verified", verify,
			"bytes", st.Total, "seconds", fmt.Sprintf("%.2f", took.Seconds()), "rate", rate(st.Hashed, took))
	}
	return nil
}

// Unstage ends this node's use of its staged copy when the job ends, and removes it unless
// --stage-keep or another job on the node still uses it.
func Unstage(e *node.Env) {
	st := e.Staged()
	if st == nil {
		return
	}
	removed, err := st.Release(!e.Cfg.StageKeep)
	switch {
	case err != nil:
		e.Log.Warn("cannot remove the staged copy of the model", "dir", st.Dir, "error", err)
	case removed:
		e.Log.Info("staged copy of the model removed", "dir", st.Dir)
	case !e.Cfg.StageKeep:
		e.Log.Info("staged copy of the model kept: another job on the node, or a node sharing the stage directory, still uses it", "dir", st.Dir)
	}
}

// watchPrep reports a phase's progress every prepProgressInterval, to the metrics and to
// progress, until the returned stop is called, which reports it once more with the phase's
// size.
func watchPrep(e *node.Env, phase string, done *atomic.Int64, progress func(metrics.Prep, string)) (stop func(total int64)) {
	start := e.Clock.Now()
	var total int64
	report := func() {
		p := metrics.Prep{Bytes: done.Load(), Total: total, Seconds: e.Clock.Now().Sub(start).Seconds()}
		e.State.SetPrep(phase, p)
		if progress != nil {
			progress(p, phase)
		}
	}
	stopWatch := lifecycle.Background(context.Background(), func(ctx context.Context) {
		for {
			select {
			case <-ctx.Done():
				return
			case <-e.Clock.After(prepProgressInterval):
				report()
				e.Log.Info("preparing the model", "phase", phase, "bytes", done.Load(), "rate", rate(done.Load(), e.Clock.Now().Sub(start)))
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

// Worker is a worker's part of the preparation; a worker that starts engines of
// its own (replicas) then waits for the head's verdict, which covers the files other nodes
// hashed.
func Worker(ctx context.Context, e *node.Env, engines bool) error {
	if err := Node(ctx, e, nil); err != nil {
		return err
	}
	if !engines {
		return nil
	}
	return awaitVerdict(ctx, e)
}
