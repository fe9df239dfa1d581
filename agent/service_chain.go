package agent

// A service's chain, while a job of it runs: the successor queued and followed, the handover,
// and the job's own end before its time limit (service.go has the service's file).

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/llm-agent/llm-agent/agent/lifecycle"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/slurm"
)

// Scheduler is what a job of a service needs of Slurm to queue its successor (slurm.Commands).
type Scheduler interface {
	ShowJob(ctx context.Context, id string) (slurm.JobInfo, error)
	BatchScript(ctx context.Context, id string) ([]byte, error)
	Submit(ctx context.Context, args, env []string) (string, error)
	Queue(ctx context.Context, id string) (slurm.QueueState, error)
}

// Timings of a service's handover; variables, so that the unit tests run a handover in
// a second.
var (
	servicePollInterval = time.Second // the service file, and the time left
	queuePollInterval   = 5 * time.Second
	// handoverFollow is how long the predecessor still serves once its successor is ready,
	// closing each connection after its answer, so that clients that follow the service file
	// (the tunnel, the Python client) move over before it answers 503.
	handoverFollow = 10 * time.Second
	// handoverLinger bounds how long it then answers 503 with the successor's address.
	handoverLinger = 60 * time.Second
	// submitRetryAfter is the wait before a refused or failed successor is queued again.
	submitRetryAfter = 10 * time.Second
)

// serviceStage watches the service while the job runs: it queues the successor once the job
// is ready, follows it in the queue, hands over once it serves, and ends the job before its
// time limit. The stage ends (a clean stop) when the job has handed over or its time is up.
func (h *head) serviceStage(run context.Context) lifecycle.Stage {
	if h.service == nil {
		return lifecycle.Stage{Name: "service", Start: func(context.Context) (<-chan error, error) { return nil, nil }}
	}
	var stop func()
	return lifecycle.Stage{Name: "service", Start: func(context.Context) (<-chan error, error) {
		done := make(chan error, 1)
		stop = lifecycle.Background(run, func(ctx context.Context) {
			if why := h.service.watch(ctx); why != "" {
				h.stopReason.Store(&why)
				done <- nil
			}
		})
		return done, nil
	}, Stop: func() { stop() }}
}

// endMargin is how long before its time limit a job of a service stops by itself: its drain
// and some slack.
func (s *service) endMargin() time.Duration { return s.h.cfg.Grace + 5*time.Second }

// needsSuccessor tells whether the service must outlive this job.
func (s *service) needsSuccessor() bool {
	end := s.h.alloc.EndTime
	return !s.until.IsZero() && !end.IsZero() && end.Before(s.until)
}

// stopAt is when the job stops by itself: before its time limit, or at the service's end when
// that comes first. Zero: never (Slurm's signal stops it).
func (s *service) stopAt() time.Time {
	end := s.h.alloc.EndTime
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

// watch runs until the job should end, and returns why; "" when ctx ended first.
func (s *service) watch(ctx context.Context) string {
	clk := s.h.deps.Clock
	for {
		select {
		case <-ctx.Done():
			return ""
		case <-clk.After(servicePollInterval):
		}
		f, err := jobfiles.ReadService(s.dir)
		if err != nil {
			s.h.log.Warn("cannot read the service's file", "service", s.name, "error", err)
			continue
		}
		if next := f.Service.Current; next != s.me && next != "" && f.State == jobfiles.StateReady && s.queuedByMe(f, next) {
			return s.handOver(ctx, f.Connection)
		}
		if s.h.everReady.Load() && s.needsSuccessor() && !f.Service.Ended {
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
func (s *service) queuedByMe(f jobfiles.ServiceFile, id string) bool {
	j := f.Service.Job(id)
	return j != nil && j.Of == s.me
}

// followSuccessor queues the successor when there is none, asks squeue how it stands, and
// queues it again when it ended before it was ready, up to the retries.
func (s *service) followSuccessor(ctx context.Context, f jobfiles.ServiceFile) {
	next := f.Service.Successor
	now := s.h.deps.Clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case next == nil || next.Of != s.me:
		s.update(func(f *jobfiles.ServiceFile) { s.submit(ctx, f, 1) })
	case next.State == "failed":
		if next.Attempts > s.h.cfg.SuccessorRetries || now.Sub(s.lastSubmit) < submitRetryAfter {
			return
		}
		s.update(func(f *jobfiles.ServiceFile) { s.submit(ctx, f, next.Attempts+1) })
	case next.State == "ready" || next.State == "cancelled":
	case now.Sub(s.lastQueue) >= queuePollInterval:
		s.lastQueue = now
		q, err := s.h.deps.Scheduler.Queue(ctx, next.JobID)
		if err != nil {
			s.h.log.Warn("cannot ask squeue for the successor", "job", next.JobID, "error", err)
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
				s.h.log.Warn("the successor failed", "job", n.JobID, "state", q.State, "attempt", n.Attempts)
			default:
				n.State, n.Reason = strings.ToLower(q.State), q.Reason
			}
		})
	}
}

// update changes the service's file, unless the chain has ended meanwhile.
func (s *service) update(f func(f *jobfiles.ServiceFile)) {
	_, err := jobfiles.UpdateService(s.dir, func(sf *jobfiles.ServiceFile) error {
		if sf.Service.Ended {
			return nil
		}
		f(sf)
		return nil
	})
	if err != nil {
		s.h.log.Warn("cannot update the service's file", "service", s.name, "error", err)
	}
}

// submit queues the successor, under the service's lock: llm-agent stop --service, which takes
// it too, then sees the successor and cancels it.
func (s *service) submit(ctx context.Context, f *jobfiles.ServiceFile, attempt int) {
	s.lastSubmit = s.h.deps.Clock.Now()
	n := &jobfiles.Successor{State: "failed", Attempts: attempt, Of: s.me}
	f.Service.Successor = n
	id, dep, err := s.sbatch(ctx)
	n.Dependency = dep
	if err != nil {
		n.Reason = err.Error()
		s.h.log.Error("cannot queue the successor", "attempt", attempt, "error", err)
		return
	}
	n.JobID, n.State = id, "pending"
	s.h.log.Info("successor queued", "job", id, "dependency", dep, "attempt", attempt)
}

// sbatch submits the job's own batch script again, with the job's resources, its options as
// the script's arguments, and the dependency that lets it start a handover before the job's
// time limit.
func (s *service) sbatch(ctx context.Context) (id, dep string, err error) {
	sched := s.h.deps.Scheduler
	info, err := sched.ShowJob(ctx, s.me)
	if err != nil {
		return "", "", err
	}
	script, err := sched.BatchScript(ctx, s.me)
	if err != nil {
		return "", "", err
	}
	// sbatch keeps its own copy of the script; this one goes once it is queued.
	path := filepath.Join(s.h.stateDir, "successor.sbatch")
	if err := jobfiles.WriteFileAtomic(path, script, 0o700); err != nil {
		return "", "", err
	}
	defer os.Remove(path)
	dep = "after:" + s.me
	if m := dependencyMinutes(info.TimeLimit, s.h.cfg.Handover); m > 0 {
		dep += fmt.Sprintf("+%d", m)
	}
	args := append(info.ResubmitArgs(), "--dependency="+dep)
	args = append(append(args, s.h.cfg.SuccessorSbatch...), path)
	args = append(args, s.h.deps.Args...)
	id, err = sched.Submit(ctx, args, successorEnv(os.Environ()))
	return id, dep, err
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

// handOver turns the clients over to the successor, which serves now: for handoverFollow the
// job still serves, closing each connection after its answer, so that clients that follow the
// service's file move over; then it answers 503 with the successor's address, for up to
// handoverLinger, before it drains and ends. Both give way to the job's time limit, the 503s
// getting at least half of what is left.
func (s *service) handOver(ctx context.Context, to jobfiles.Connection) string {
	h := s.h
	h.log.Info("the successor serves: handing over", "successor", to.JobID, "url", to.BaseURL)
	if h.front.gw != nil {
		h.front.gw.CloseConnections()
	}
	wait := func(d time.Duration) bool {
		if at := s.stopAt(); !at.IsZero() {
			d = min(d, at.Sub(h.deps.Clock.Now()))
		}
		if d <= 0 {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-h.deps.Clock.After(d):
			return true
		}
	}
	// A successor ready late leaves little time before the job must end: half of it still
	// goes to the 503s, so that a client that does not follow learns where the service went.
	follow := handoverFollow
	if at := s.stopAt(); !at.IsZero() {
		follow = min(follow, at.Sub(h.deps.Clock.Now())/2)
	}
	if !wait(follow) {
		return ""
	}
	if h.front.gw != nil {
		h.front.gw.HandOver(to.BaseURL)
		if !wait(handoverLinger) {
			return ""
		}
	}
	return "handed over to job " + to.JobID
}
