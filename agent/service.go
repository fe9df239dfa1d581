package agent

// A service: an endpoint with a name that outlives its jobs. Each job of the chain queues its
// successor with a Slurm dependency; the successor starts before the job's time limit, becomes
// ready and takes the service's file over; the job then turns its clients over and ends.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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

// ErrService is wrapped by a service that cannot be joined: its name, or another job of the
// same name serving.
var ErrService = jobfiles.ErrService

func (c Config) validateService() error {
	if c.Service == "" {
		if c.Until != "" || c.For != 0 {
			return fmt.Errorf("%w: --until and --for keep a service up; give it a name with --service", ErrConfig)
		}
		return nil
	}
	if err := jobfiles.CheckServiceName(c.Service); err != nil {
		return fmt.Errorf("%w: --service: %w", ErrConfig, err)
	}
	if c.Until != "" && c.For != 0 {
		return fmt.Errorf("%w: give --until or --for, not both", ErrConfig)
	}
	if c.Until != "" {
		if _, err := parseUntil(c.Until); err != nil {
			return fmt.Errorf("%w: --until: %w", ErrConfig, err)
		}
	}
	return nil
}

// parseLongDuration reads a duration as Go writes it, with days ("7d", "1d12h"), or as Slurm's
// time limits ("7-00:00:00").
func parseLongDuration(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	days := time.Duration(0)
	if d, rest, ok := strings.Cut(v, "d"); ok && !strings.Contains(d, ":") {
		var n int
		if _, err := fmt.Sscanf(d, "%d", &n); err != nil || n < 0 || fmt.Sprint(n) != d {
			return 0, fmt.Errorf("%q is not a duration such as 7d, 36h or 7-00:00:00", v)
		}
		days, v = time.Duration(n)*24*time.Hour, rest
		if v == "" {
			return days, nil
		}
	}
	d, err := slurm.ParseTimeLimit(v)
	if err != nil || d+days <= 0 {
		return 0, fmt.Errorf("%q is not a duration such as 7d, 36h or 7-00:00:00", v)
	}
	return d + days, nil
}

// parseUntil reads --until: RFC 3339, or a local date and time.
func parseUntil(v string) (time.Time, error) {
	v = strings.TrimSpace(v)
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02T15:04:05", "2006-01-02T15:04", "2006-01-02 15:04", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, v, time.Local); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a time such as 2026-12-24T18:00 or 2026-12-24T18:00:00+01:00", v)
}

// dependencyMinutes is the +MIN of the successor's --dependency=after:JOB+MIN: the minutes
// from the job's start after which the successor may start, its time limit less the
// handover, rounded down so that it is never late.
func dependencyMinutes(limit, handover time.Duration) int {
	if limit <= handover {
		return 0
	}
	return int((limit - handover) / time.Minute)
}

// service is the head's side of a service.
type service struct {
	h     *head
	dir   string
	name  string
	me    string
	until time.Time // zero: no end

	// handedOver is set once the successor serves and this job turns clients over.
	handedOver atomic.Bool
	mu         sync.Mutex
	lastQueue  time.Time
	lastSubmit time.Time
}

// joinService enters the job in its service's file: as the successor a job of the chain
// queued, or as the first job of a new chain. A job of the same name that still serves, and
// that did not queue this one, is refused. It runs before the keys: a service keeps one key
// for all its jobs, in its folder.
func (h *head) joinService(ctx context.Context) error {
	cfg := h.cfg
	if cfg.Service == "" {
		return nil
	}
	home := h.deps.Getenv("HOME")
	if home == "" {
		return fmt.Errorf("%w: HOME is unset; a service keeps its files in ~/%s", ErrBadInput, jobfiles.ServicesDir)
	}
	s := &service{h: h, dir: jobfiles.ServiceDir(home, cfg.Service), name: cfg.Service, me: h.alloc.JobID}
	now := h.deps.Clock.Now()
	_, err := jobfiles.UpdateService(s.dir, func(f *jobfiles.ServiceFile) error {
		info := &f.Service
		successor := info.Successor != nil && info.Successor.JobID == s.me && !info.Ended
		if !successor && info.Current != "" && info.Current != s.me && !jobEnded(f.State) {
			if q, err := h.deps.Scheduler.Queue(ctx, info.Current); err != nil || !q.Ended() {
				return fmt.Errorf("%w: service %s is served by job %s (%s); end it first with llm-agent stop --service %s, or choose another name",
					ErrService, s.name, info.Current, f.State, s.name)
			}
		}
		if successor {
			if info.Until != nil {
				s.until = *info.Until
			}
			info.Successor.State, info.Successor.Reason = "running", ""
		} else {
			// A new chain: the history stays, the rest starts afresh.
			*info = jobfiles.ServiceInfo{Name: s.name, State: jobfiles.ServiceStarting, Jobs: info.Jobs}
			switch {
			case cfg.Until != "":
				s.until, _ = parseUntil(cfg.Until)
			case cfg.For > 0:
				s.until = now.Add(cfg.For)
			}
			if !s.until.IsZero() {
				u := s.until.UTC()
				info.Until = &u
			}
			info.Current = s.me
		}
		info.Name, info.Handover = s.name, cfg.Handover.String()
		j := jobfiles.ServiceJob{JobID: s.me, Node: h.alloc.Head(), StateDir: h.stateDir, Started: now.UTC()}
		if successor {
			j.Of = info.Successor.Of
		}
		info.Jobs = append(info.Jobs, j)
		return s.ensureKey()
	})
	if err != nil {
		if errors.Is(err, ErrService) {
			return fmt.Errorf("%w: %w", ErrBadInput, err)
		}
		return err
	}
	if cfg.APIKeyFile == "" && cfg.KeysFile == "" {
		h.cfg.APIKeyFile = filepath.Join(s.dir, jobfiles.APIKeyFile)
	}
	h.service = s
	h.log.Info("serving as service", "service", s.name, "until", s.until, "handover", cfg.Handover, "file", filepath.Join(s.dir, jobfiles.ConnectionFile))
	return nil
}

// ensureKey makes the service's key once, for all its jobs, unless the job brings its own.
func (s *service) ensureKey() error {
	cfg := s.h.cfg
	if cfg.APIKeyFile != "" || cfg.KeysFile != "" {
		return nil
	}
	path := filepath.Join(s.dir, jobfiles.APIKeyFile)
	if _, err := os.Lstat(path); err == nil {
		return nil
	}
	key, err := GenerateKey()
	if err != nil {
		return err
	}
	return jobfiles.WriteFileAtomic(path, []byte(key+"\n"), 0o600)
}

func jobEnded(s jobfiles.ServiceState) bool {
	return s == jobfiles.StateStopped || s == jobfiles.StateFailed
}

// mirror copies the job's connection into the service's file while the job is the service's
// current one; a ready successor becomes the current one. It runs on every write of the
// job's connection file.
func (s *service) mirror(c jobfiles.Connection) {
	_, err := jobfiles.UpdateService(s.dir, func(f *jobfiles.ServiceFile) error {
		info := &f.Service
		if j := info.Job(s.me); j != nil && c.ReadyAt != nil && j.Ready == nil {
			j.Ready = c.ReadyAt
		}
		if info.Current != s.me {
			if c.State != jobfiles.StateReady || info.Ended {
				return nil
			}
			// Ready: take the service over from the predecessor.
			if info.Successor != nil && info.Successor.JobID == s.me {
				info.Successor.State, info.Successor.Reason = "ready", ""
			}
			info.Current = s.me
		}
		f.Connection = s.connection(c)
		if info.Successor != nil && info.Successor.JobID == s.me {
			info.Successor = nil // this job no longer waits to take over: it serves
		}
		switch {
		case info.Ended && !jobEnded(c.State):
			info.State = jobfiles.ServiceStopping
		case c.State == jobfiles.StateReady:
			info.State, info.Reason = jobfiles.ServiceServing, ""
		case c.State == jobfiles.StateStarting:
			info.State, info.Reason = jobfiles.ServiceStarting, c.Reason
		case !jobEnded(c.State):
			info.State, info.Reason = string(c.State), c.Reason
		}
		return nil
	})
	if err != nil {
		s.h.log.Warn("cannot update the service's file", "service", s.name, "error", err)
	}
}

// connection is the job's connection as the service's file holds it: the tunnel command a
// laptop runs follows the service, not this job.
func (s *service) connection(c jobfiles.Connection) jobfiles.Connection {
	if c.Tunnel != "" {
		c.Tunnel = strings.TrimSuffix(c.Tunnel, " "+c.JobID) + " --service " + s.name
	}
	return c
}

// end writes the job's end into the service's file: the history, and, when the job was the
// current one, what the service does now (wait for the successor, or end).
func (s *service) end(c jobfiles.Connection, why string) {
	now := time.Now().UTC()
	_, err := jobfiles.UpdateService(s.dir, func(f *jobfiles.ServiceFile) error {
		info := &f.Service
		if j := info.Job(s.me); j != nil {
			j.Ended, j.Why = &now, why
		}
		if info.Current != s.me {
			return nil
		}
		f.Connection = s.connection(c)
		next := info.Successor
		switch {
		case info.Ended:
			info.State = jobfiles.ServiceStopped
		case next != nil && next.State == "failed":
			info.Ended = true
			info.State, info.Reason = jobfiles.ServiceFailed, fmt.Sprintf("the successor could not start after %d attempts: %s", next.Attempts, next.Reason)
		case next != nil && next.State != "cancelled":
			info.State = jobfiles.ServiceWaiting
			info.Reason = fmt.Sprintf("job %s is %s", next.JobID, next.State)
			if next.Reason != "" {
				info.Reason += " (" + next.Reason + ")"
			}
			f.State, f.Reason = jobfiles.StateStarting, info.State+": "+info.Reason
		case c.State == jobfiles.StateFailed:
			info.Ended = true
			info.State, info.Reason = jobfiles.ServiceFailed, "job "+s.me+" failed with no successor queued: "+c.Reason
		default:
			info.Ended = true
			info.State, info.Reason = jobfiles.ServiceStopped, "job "+s.me+" ended with no successor queued: "+why
			if !s.until.IsZero() && !now.Before(s.until.Add(-time.Minute)) {
				info.Reason = "the service ran until " + s.until.Format(time.RFC3339)
			}
		}
		return nil
	})
	if err != nil {
		s.h.log.Warn("cannot update the service's file", "service", s.name, "error", err)
	}
}

// serviceStage watches the service while the job runs: it queues the successor once the job
// is ready, follows it in the queue, hands over once it serves, and ends the job before its
// time limit. The stage ends (a clean stop) when the job has handed over or its time is up.
func (h *head) serviceStage(run context.Context) stage {
	if h.service == nil {
		return stage{name: "service", start: func(context.Context) (<-chan error, error) { return nil, nil }}
	}
	var stop func()
	return stage{name: "service", start: func(context.Context) (<-chan error, error) {
		done := make(chan error, 1)
		stop = background(run, func(ctx context.Context) {
			if why := h.service.watch(ctx); why != "" {
				h.stopReason.Store(&why)
				done <- nil
			}
		})
		return done, nil
	}, stop: func() { stop() }}
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
		s.update(ctx, func(f *jobfiles.ServiceFile) { s.submit(ctx, f, 1) })
	case next.State == "failed":
		if next.Attempts > s.h.cfg.SuccessorRetries || now.Sub(s.lastSubmit) < submitRetryAfter {
			return
		}
		s.update(ctx, func(f *jobfiles.ServiceFile) { s.submit(ctx, f, next.Attempts+1) })
	case next.State == "ready" || next.State == "cancelled":
	case now.Sub(s.lastQueue) >= queuePollInterval:
		s.lastQueue = now
		q, err := s.h.deps.Scheduler.Queue(ctx, next.JobID)
		if err != nil {
			s.h.log.Warn("cannot ask squeue for the successor", "job", next.JobID, "error", err)
			return
		}
		s.update(ctx, func(f *jobfiles.ServiceFile) {
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
func (s *service) update(_ context.Context, f func(f *jobfiles.ServiceFile)) {
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
// service's file move over; then it answers 503 with the successor's address, for up to handoverLinger, before it
// drains and ends. Both give way to the job's time limit.
func (s *service) handOver(ctx context.Context, to jobfiles.Connection) string {
	h := s.h
	s.handedOver.Store(true)
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
	if !wait(handoverFollow) {
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
