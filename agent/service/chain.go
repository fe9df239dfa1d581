package service

// The chain, while a job of the service runs: the successor queued and followed, and the
// job's own end before its time limit.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/slurm"
)

// dependencyMinutes is the +MIN of the successor's --dependency=after:JOB+MIN: the minutes
// from the job's start after which the successor may start, its time limit less the
// handover, rounded down so that it is never late.
func dependencyMinutes(limit, handover time.Duration) int {
	if limit <= handover {
		return 0
	}
	return int((limit - handover) / time.Minute)
}

// endMargin is how long before its time limit a job of a service stops by itself: its drain
// and some slack.
func (s *Service) endMargin() time.Duration { return s.cfg.Grace + 5*time.Second }

// needsSuccessor tells whether the service must outlive this job.
func (s *Service) needsSuccessor() bool {
	end := s.job.End
	return !s.until.IsZero() && !end.IsZero() && end.Before(s.until)
}

// stopAt is when the job stops by itself: before its time limit, or at the service's end when
// that comes first. Zero: never (Slurm's signal stops it).
func (s *Service) stopAt() time.Time {
	end := s.job.End
	switch {
	case s.needsSuccessor():
		return end.Add(-s.endMargin())
	case !s.until.IsZero() && (end.IsZero() || s.until.Before(end.Add(-s.endMargin()))):
		return s.until
	case !s.until.IsZero():
		return end.Add(-s.endMargin())
	}
	return time.Time{}
}

// Watch runs until the job should end, and returns why; "" when ctx ended first.
func (s *Service) Watch(ctx context.Context, ready func() bool, front Front) string {
	s.ready, s.front = ready, front
	if s.Extra() {
		return s.watchExtra(ctx)
	}
	clk := s.clock
	for {
		select {
		case <-ctx.Done():
			return ""
		case <-clk.After(s.timings.Poll):
		}
		f, err := jobfiles.ReadService(s.dir)
		if err != nil {
			s.log.Warn("cannot read the service's file", "service", s.name, "error", err)
			continue
		}
		if next := f.Service.Current; next != s.me && next != "" && f.State == jobfiles.StateReady && s.queuedByMe(f, next) {
			return s.handOver(ctx, f.Connection)
		}
		if why := s.idle(ctx); why != "" {
			s.cancelExtras(ctx)
			return why
		}
		s.scaleStep(ctx, f)
		if s.ready() && s.needsSuccessor() && !f.Service.Ended {
			s.followSuccessor(ctx, f)
		}
		if at := s.stopAt(); !at.IsZero() && !clk.Now().Before(at) {
			if s.needsSuccessor() {
				return "the time limit is near and the successor is not ready"
			}
			return "the service's time is over"
		}
	}
}

// queuedByMe tells whether job id is the successor this job queued.
func (s *Service) queuedByMe(f jobfiles.ServiceFile, id string) bool {
	j := f.Service.Job(id)
	return j != nil && j.Of == s.me
}

// followSuccessor queues the successor when there is none, asks squeue how it stands, and
// queues it again when it ended before it was ready, up to the retries.
func (s *Service) followSuccessor(ctx context.Context, f jobfiles.ServiceFile) {
	next := f.Service.Successor
	now := s.clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case next == nil || next.Of != s.me:
		s.update(func(f *jobfiles.ServiceFile) { s.submit(ctx, f, 1) })
	case next.State == "failed":
		if next.Attempts > s.cfg.SuccessorRetries || now.Sub(s.lastSubmit) < s.timings.RetryAfter {
			return
		}
		s.update(func(f *jobfiles.ServiceFile) { s.submit(ctx, f, next.Attempts+1) })
	case next.State == "ready" || next.State == "cancelled":
	case now.Sub(s.lastQueue) >= s.timings.Queue:
		s.lastQueue = now
		q, err := s.sched.Queue(ctx, next.JobID)
		if err != nil {
			s.log.Warn("cannot ask squeue for the successor", "job", next.JobID, "error", err)
			return
		}
		s.update(func(f *jobfiles.ServiceFile) {
			n := f.Service.Successor
			if n == nil || n.JobID != next.JobID || f.Service.Current == next.JobID {
				return
			}
			switch {
			case q.Ended():
				n.State = "failed"
				n.Reason = fmt.Sprintf("job %s ended before it was ready", n.JobID)
				if q.State != "" {
					n.Reason = fmt.Sprintf("job %s ended (%s) before it was ready", n.JobID, q.State)
				}
				s.log.Warn("the successor failed", "job", n.JobID, "state", q.State, "attempt", n.Attempts)
			default:
				n.State, n.Reason = strings.ToLower(q.State), q.Reason
			}
		})
	}
}

// submit queues the successor, under the service's lock: llm-agent stop --service, which takes
// it too, then sees the successor and cancels it.
func (s *Service) submit(ctx context.Context, f *jobfiles.ServiceFile, attempt int) {
	s.lastSubmit = s.clock.Now()
	n := &jobfiles.Successor{State: "failed", Attempts: attempt, Of: s.me}
	f.Service.Successor = n
	id, dep, err := s.sbatch(ctx)
	n.Dependency = dep
	if err != nil {
		n.Reason = err.Error()
		s.log.Error("cannot queue the successor", "attempt", attempt, "error", err)
		return
	}
	n.JobID, n.State = id, "pending"
	s.log.Info("successor queued", "job", id, "dependency", dep, "attempt", attempt)
}

// sbatch submits the job's own batch script again, with the job's resources, its options as
// the script's arguments, and the dependency that lets it start a handover before the job's
// time limit.
func (s *Service) sbatch(ctx context.Context) (id, dep string, err error) {
	info, script, err := s.resubmission(ctx)
	if err != nil {
		return "", "", err
	}
	// sbatch keeps its own copy of the script; this one goes once it is queued.
	path := filepath.Join(s.job.StateDir, "successor.sbatch")
	if err := jobfiles.WriteFileAtomic(path, script, 0o700); err != nil {
		return "", "", err
	}
	defer os.Remove(path)
	dep = "after:" + s.me
	if m := dependencyMinutes(info.TimeLimit, s.cfg.Handover); m > 0 {
		dep += fmt.Sprintf("+%d", m)
	}
	args := append(info.ResubmitArgs(), "--dependency="+dep)
	args = append(append(args, s.cfg.SuccessorSbatch...), path)
	args = append(args, s.args...)
	id, err = s.sched.Submit(ctx, args, successorEnv(os.Environ()))
	return id, dep, err
}

// resubmission is what queues this job again: what Slurm has of it (its resources, for sbatch
// options) and its batch script.
func (s *Service) resubmission(ctx context.Context) (slurm.JobInfo, []byte, error) {
	info, err := s.sched.ShowJob(ctx, s.me)
	if err != nil {
		return info, nil, err
	}
	script, err := s.sched.BatchScript(ctx, s.me)
	return info, script, err
}

// successorEnv is the job's environment less what Slurm set for this job and its step, which
// would mislead the successor's srun; the user's SBATCH_ settings and SLURM_CONF stay.
func successorEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if (strings.HasPrefix(kv, "SLURM_") && !strings.HasPrefix(kv, "SLURM_CONF=")) || strings.HasPrefix(kv, "SRUN_") {
			continue
		}
		out = append(out, kv)
	}
	return out
}
