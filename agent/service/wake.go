package service

// Waking a sleeping service: its job queued again from the record the sleeping job saved. A
// wake is idempotent: while the job one wake queued is in the queue or starting, another wake
// (a second client, say) queues nothing more.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/slurm"
)

// ErrCannotWake is wrapped by a wake of a service that is not asleep and will not serve again:
// its chain has ended, or it never slept and has no record to queue its job from.
var ErrCannotWake = errors.New("cannot wake the service")

// Waker is what a wake needs of Slurm.
type Waker interface {
	Submit(ctx context.Context, args, env []string) (string, error)
	Queue(ctx context.Context, id string) (slurm.QueueState, error)
}

// Woken is what a wake did.
type Woken struct {
	// JobID is the job that serves the service now, or that will.
	JobID string
	// Queued tells whether this wake queued it; false when it was queued or serving already.
	Queued bool
	// State is the service's state after the wake.
	State string
}

// Wake queues the sleeping service's job again, from its folder dir, with env the environment
// of the submission; by says who wakes it (the service's file records it).
func Wake(ctx context.Context, dir string, sched Waker, env []string, by string, now time.Time) (Woken, error) {
	var w Woken
	if _, err := os.Stat(filepath.Join(dir, jobfiles.ConnectionFile)); err != nil {
		return w, fmt.Errorf("%w: no service in %s: %w", ErrCannotWake, dir, err)
	}
	_, err := jobfiles.UpdateService(dir, func(f *jobfiles.ServiceFile) error {
		info := &f.Service
		switch {
		case info.Name == "":
			return fmt.Errorf("%w: %s holds no service", ErrCannotWake, dir)
		case info.Ended:
			return fmt.Errorf("%w: service %s has ended (%s: %s); start it again with sbatch", ErrCannotWake, info.Name, info.State, info.Reason)
		case info.Waking != nil && !endedBeforeReady(ctx, sched, info.Waking.JobID):
			w = Woken{JobID: info.Waking.JobID, State: info.State}
			return nil
		case info.State != jobfiles.ServiceAsleep && info.Waking == nil:
			w = Woken{JobID: info.Current, State: info.State}
			return nil
		}
		rec, err := jobfiles.ReadWakeRecord(dir)
		if err != nil {
			return fmt.Errorf("%w: service %s: its wake record: %w", ErrCannotWake, info.Name, err)
		}
		args := append(append(append([]string(nil), rec.Args...), filepath.Join(dir, jobfiles.WakeScriptFile)), rec.AgentArgs...)
		// The job's own settings win over the waker's environment.
		id, err := sched.Submit(ctx, args, append(successorEnv(env), rec.Env...))
		if err != nil {
			return fmt.Errorf("queue the service's job: %w", err)
		}
		info.Waking = &jobfiles.Wake{JobID: id, Submitted: now.UTC(), By: by}
		info.State, info.Reason = jobfiles.ServiceWaking, fmt.Sprintf("job %s queued by %s", id, by)
		w = Woken{JobID: id, Queued: true, State: info.State}
		return nil
	})
	return w, err
}

// endedBeforeReady tells whether the job an earlier wake queued has left the queue without
// serving, so that this wake queues another.
func endedBeforeReady(ctx context.Context, sched Waker, id string) bool {
	q, err := sched.Queue(ctx, id)
	return err == nil && q.Ended()
}
