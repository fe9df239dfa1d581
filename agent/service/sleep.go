package service

// A service that sleeps when idle (--idle-release): the job ends once no request has arrived
// for that long, and the service's file says it is asleep, with the time and the reason. The
// job first saves what it takes to queue it again (jobfiles.WakeRecord), since Slurm forgets an
// ended job's script, and cancels a successor it queued, which would otherwise start the
// service again by itself.

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// idle returns why the job releases its allocation, once it has been ready and no request has
// arrived for --idle-release; "" while it serves.
func (s *Service) idle(ctx context.Context) string {
	limit := s.cfg.IdleRelease
	if limit <= 0 || s.front == nil || !s.ready() {
		return ""
	}
	idle := s.front.Idle()
	if idle < limit {
		return ""
	}
	why := fmt.Sprintf("asleep: no request for %s (--idle-release %s)", idle.Round(time.Second), limit)
	s.log.Info("the service is idle; releasing the allocation", "service", s.name, "idle", idle.Round(time.Second), "idle_release", limit)
	if err := s.saveWake(ctx); err != nil {
		// Without the record no wake can queue the job again: keep serving rather than
		// sleep for good.
		s.log.Error("cannot save what a wake needs; the job keeps serving", "service", s.name, "error", err)
		return ""
	}
	s.cancelSuccessor(ctx)
	s.asleep.Store(true)
	return why
}

// saveWake writes the job's batch script and sbatch options into the service's folder.
func (s *Service) saveWake(ctx context.Context) error {
	info, script, err := s.resubmission(ctx)
	if err != nil {
		return err
	}
	rec := jobfiles.WakeRecord{Job: s.me, Args: append(info.ResubmitArgs(), s.cfg.SuccessorSbatch...), AgentArgs: s.args,
		Env: agentEnv(os.Environ()), Saved: s.clock.Now().UTC()}
	return jobfiles.WriteWakeRecord(s.dir, rec, script)
}

// agentEnv are the LLM_AGENT_* variables of env.
func agentEnv(env []string) []string {
	var out []string
	for _, kv := range env {
		if strings.HasPrefix(kv, "LLM_AGENT_") {
			out = append(out, kv)
		}
	}
	return out
}

// cancelSuccessor cancels the successor this job queued, if any.
func (s *Service) cancelSuccessor(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var id string
	s.update(func(f *jobfiles.ServiceFile) {
		if n := f.Service.Successor; n != nil && n.Of == s.me && n.JobID != "" && n.State != "failed" {
			id = n.JobID
			n.State, n.Reason = "cancelled", "the service fell asleep"
		}
	})
	if id == "" {
		return
	}
	if err := s.sched.Cancel(ctx, id); err != nil {
		s.log.Warn("cannot cancel the successor", "job", id, "error", err)
	}
}
