package service

// The serving job under load (--max-jobs): it samples its engines every --scale-interval, asks
// the policy (agent/scale), and adds a job (queued as its own successor would be, with
// --extra-of) or drains the youngest added one: out of the rotation, its requests finished,
// then cancelled. Every decision is logged and counted.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/llm-agent/llm-agent/agent/gateway"
	"github.com/llm-agent/llm-agent/agent/scale"
	"github.com/llm-agent/llm-agent/jobfiles"
)

// Pool is the serving job's view of its engines, for scaling (the head, over its gateway).
type Pool interface {
	// Load samples the engines that serve now: the job's own and its added jobs' in the
	// rotation.
	Load(ctx context.Context) scale.Sample
	// Retire takes added job id's engine out of the rotation and waits, up to budget, until
	// the requests it has finish.
	Retire(ctx context.Context, id string, budget time.Duration)
}

// scaler is the serving job's scaling state.
type scaler struct {
	policy *scale.Policy
	pool   Pool
	next   time.Time // the next sample

	mu   sync.Mutex
	last scale.Decision
	jobs int // the jobs at the last sample, the serving one included
	ups  int
	down int
}

// SetPool turns scaling on for the serving job, over pool; a job with --max-jobs 1, or one
// that was added itself, does not scale.
func (s *Service) SetPool(p Pool) {
	if s.Extra() || s.cfg.MaxJobs <= 1 {
		return
	}
	s.scaler = &scaler{policy: scale.New(s.cfg.Scaling()), pool: p}
}

// scaleStep samples and acts when a sample is due.
func (s *Service) scaleStep(ctx context.Context, f jobfiles.ServiceFile) {
	sc := s.scaler
	now := s.clock.Now()
	if sc == nil || !s.ready() || now.Before(sc.next) || f.Service.Current != s.me {
		return
	}
	sc.next = now.Add(s.cfg.ScaleInterval)
	s.followExtras(ctx, f)
	x := sc.pool.Load(ctx)
	x.At = now
	jobs, starting := 1, 0
	for _, e := range f.Service.Extras {
		if e.State != jobfiles.ExtraDraining {
			jobs++
		}
		if e.State == jobfiles.ExtraPending || e.State == jobfiles.ExtraStarting {
			starting++
		}
	}
	d := sc.policy.Observe(x, jobs, starting)
	sc.mu.Lock()
	sc.last, sc.jobs = d, jobs
	sc.mu.Unlock()
	switch d.Action {
	case scale.Up:
		s.log.Info("scaling up: adding a job", "service", s.name, "jobs", jobs, "desired", d.Desired, "signal", d.Signal, "reason", d.Reason)
		s.addExtra(ctx, d.Reason)
	case scale.Down:
		s.log.Info("scaling down: draining the youngest added job", "service", s.name, "jobs", jobs, "desired", d.Desired, "signal", d.Signal, "reason", d.Reason)
		s.drainExtra(ctx, f, d.Reason)
	}
}

// addExtra queues one more job of the service, under its lock: the job's entry is in the file
// before the job can look for it.
func (s *Service) addExtra(ctx context.Context, why string) {
	if err := s.ensureReplicaKey(); err != nil {
		s.log.Error("cannot make the service's replica key; no job added", "error", err)
		return
	}
	s.update(func(f *jobfiles.ServiceFile) {
		info, script, err := s.resubmission(ctx)
		if err == nil {
			path := filepath.Join(s.job.StateDir, "extra.sbatch")
			if err = jobfiles.WriteFileAtomic(path, script, 0o700); err == nil {
				defer os.Remove(path)
				args := append(append(info.ResubmitArgs(), s.cfg.SuccessorSbatch...), path)
				args = append(append(args, s.args...), "--extra-of", s.me)
				var id string
				if id, err = s.sched.Submit(ctx, args, successorEnv(os.Environ())); err == nil {
					f.Service.Extras = append(f.Service.Extras, jobfiles.ExtraJob{JobID: id, Of: s.me, State: jobfiles.ExtraPending,
						Submitted: s.clock.Now().UTC(), Reason: why})
					s.scaler.mu.Lock()
					s.scaler.ups++
					s.scaler.mu.Unlock()
					s.log.Info("job added", "service", s.name, "job", id)
				}
			}
		}
		if err != nil {
			s.log.Error("cannot add a job", "service", s.name, "error", err)
		}
	})
}

// drainExtra takes the youngest added job that serves out of the rotation, lets its requests
// finish within the grace, cancels it and drops its entry.
func (s *Service) drainExtra(ctx context.Context, f jobfiles.ServiceFile, why string) {
	var youngest *jobfiles.ExtraJob
	for i, e := range f.Service.Extras {
		if e.State == jobfiles.ExtraReady && (youngest == nil || e.Submitted.After(youngest.Submitted)) {
			youngest = &f.Service.Extras[i]
		}
	}
	if youngest == nil {
		return
	}
	id := youngest.JobID
	s.update(func(f *jobfiles.ServiceFile) {
		if x := f.Service.Extra(id); x != nil {
			x.State, x.Reason = jobfiles.ExtraDraining, why
		}
	})
	s.scaler.pool.Retire(ctx, id, s.cfg.Grace)
	if err := s.sched.Cancel(ctx, id); err != nil {
		s.log.Warn("cannot cancel the drained job", "job", id, "error", err)
	}
	s.update(func(f *jobfiles.ServiceFile) { f.Service.DropExtra(id) })
	s.scaler.mu.Lock()
	s.scaler.down++
	s.scaler.mu.Unlock()
	s.log.Info("job drained and cancelled", "service", s.name, "job", id)
}

// followExtras drops the added jobs that ended by themselves: refused, failed before they
// served, or ended later (their time limit).
func (s *Service) followExtras(ctx context.Context, f jobfiles.ServiceFile) {
	for _, e := range f.Service.Extras {
		q, err := s.sched.Queue(ctx, e.JobID)
		if err != nil || !q.Ended() {
			continue
		}
		s.log.Warn("an added job ended", "service", s.name, "job", e.JobID, "state", q.State, "was", e.State)
		s.update(func(f *jobfiles.ServiceFile) { f.Service.DropExtra(e.JobID) })
	}
}

// cancelExtras cancels every added job: the service sleeps or ends.
func (s *Service) cancelExtras(ctx context.Context) {
	var ids []string
	s.update(func(f *jobfiles.ServiceFile) {
		for _, e := range f.Service.Extras {
			ids = append(ids, e.JobID)
		}
		f.Service.Extras = nil
	})
	if len(ids) == 0 {
		return
	}
	if err := s.sched.Cancel(ctx, ids...); err != nil {
		s.log.Warn("cannot cancel the added jobs", "jobs", ids, "error", err)
	}
}

// ensureReplicaKey makes the service's replica key once.
func (s *Service) ensureReplicaKey() error {
	if _, err := os.Lstat(s.ReplicaKeyFile()); err == nil {
		return nil
	}
	key, err := gateway.GenerateKey()
	if err != nil {
		return err
	}
	if err := jobfiles.WriteFileAtomic(s.ReplicaKeyFile(), []byte("sk-llm-replica-"+key[len("sk-llm-"):]+"\n"), 0o600); err != nil {
		return fmt.Errorf("replica key: %w", err)
	}
	return nil
}
