// Package service runs a job's part of a service: an endpoint with a name that outlives its
// jobs. Each job of the chain queues its successor with a Slurm dependency; the successor starts
// before the job's time limit, becomes ready and takes the service's file over; the job then
// turns its clients over and ends. Idle (--idle-release), the job ends and the service sleeps
// until a wake queues it again; under load (--max-jobs) the serving job adds jobs, one more
// engine each, and drains them when the load falls. The service's file (jobfiles.ServiceFile)
// is its one record, changed only under its lock.
package service

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/gateway"
	"github.com/llm-agent/llm-agent/clock"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/slurm"
)

// Scheduler is what a job of a service needs of Slurm to queue its successor (slurm.Commands).
type Scheduler interface {
	ShowJob(ctx context.Context, id string) (slurm.JobInfo, error)
	BatchScript(ctx context.Context, id string) ([]byte, error)
	Submit(ctx context.Context, args, env []string) (string, error)
	Queue(ctx context.Context, id string) (slurm.QueueState, error)
	Cancel(ctx context.Context, ids ...string) error
}

// Timings of a service's chain. The zero value of a field means its default.
type Timings struct {
	// Poll is how often the service's file and the time left are read.
	Poll time.Duration
	// Queue is how often squeue is asked how the successor stands.
	Queue time.Duration
	// Follow is how long the predecessor still serves once its successor is ready, closing
	// each connection after its answer, so that clients that follow the service file (the
	// tunnel, the Python client) move over before it answers 503.
	Follow time.Duration
	// Linger bounds how long it then answers 503 with the successor's address.
	Linger time.Duration
	// RetryAfter is the wait before a refused or failed successor is queued again.
	RetryAfter time.Duration
}

// withDefaults fills the fields left zero.
func (t Timings) withDefaults() Timings {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&t.Poll, time.Second)
	def(&t.Queue, 5*time.Second)
	def(&t.Follow, 10*time.Second)
	def(&t.Linger, 60*time.Second)
	def(&t.RetryAfter, 10*time.Second)
	return t
}

// Front is the job's public port, which the handover turns over to the successor (the
// gateway).
type Front interface {
	// CloseConnections closes each client connection after its answer.
	CloseConnections()
	// HandOver answers every request with 503 and the successor's address at url.
	HandOver(url string)
	// Idle is how long no client request has arrived, with none in flight; 0 while any is.
	Idle() time.Duration
}

// Job is what the service knows of the job it runs in.
type Job struct {
	ID string
	// Head is the job's head node; StateDir its state directory.
	Head, StateDir string
	// End is the job's time limit; zero when unknown.
	End time.Time
}

// Options are a job's service's settings and links.
type Options struct {
	// Dir is the service's folder (jobfiles.ServiceDir).
	Dir string
	// Config is the job's: the service's name, --until or --for, the handover, the
	// successor's options, the key files.
	Config    config.Config
	Job       Job
	Scheduler Scheduler
	// Args are the agent's own options, which the successor's batch script gets again.
	Args    []string
	Clock   clock.Clock
	Log     hclog.Logger
	Timings Timings
}

// Service is the job's side of its service.
type Service struct {
	dir     string
	name    string
	me      string
	cfg     config.Config
	job     Job
	sched   Scheduler
	args    []string
	clock   clock.Clock
	log     hclog.Logger
	timings Timings
	until   time.Time // zero: no end
	// ready tells whether the job has been ready once, front is its public port: both set by
	// Watch.
	ready func() bool
	front Front

	// scaler adds and drains jobs under load (SetPool); nil without --max-jobs.
	scaler *scaler
	// asleep is set once the job releases its allocation for being idle.
	asleep atomic.Bool
	// submitted is when the wake that queued this job submitted it; nil for any other job.
	submitted *time.Time
	cold      coldStart

	mu         sync.Mutex
	lastQueue  time.Time
	lastSubmit time.Time
}

// Join enters the job in its service's file: as the successor a job of the chain queued, or as
// the first job of a new chain. A job of the same name that still serves, and that did not
// queue this one, is refused (jobfiles.ErrService). It makes the service's key, which all its
// jobs share, unless the job brings its own.
func Join(ctx context.Context, o Options) (*Service, error) {
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.Log == nil {
		o.Log = hclog.NewNullLogger()
	}
	s := &Service{dir: o.Dir, name: o.Config.Service, me: o.Job.ID, cfg: o.Config, job: o.Job, sched: o.Scheduler,
		args: o.Args, clock: o.Clock, log: o.Log, timings: o.Timings.withDefaults(), ready: func() bool { return false }}
	now := s.clock.Now()
	enter := func(f *jobfiles.ServiceFile) error { return s.enter(ctx, f, now) }
	if s.Extra() {
		enter = s.enterExtra
	}
	if _, err := jobfiles.UpdateService(s.dir, enter); err != nil {
		return nil, err
	}
	return s, nil
}

// Name is the service's name; Dir its folder; Until when it ends (zero: never).
func (s *Service) Name() string     { return s.name }
func (s *Service) Dir() string      { return s.dir }
func (s *Service) Until() time.Time { return s.until }

// KeyFile is the service's key file, which its jobs serve with unless they bring their own.
func (s *Service) KeyFile() string { return filepath.Join(s.dir, jobfiles.APIKeyFile) }

// enter enters the job in the service's file f: as the successor the chain queued, or as the
// first job of a new chain; a job of the same name that still serves refuses it.
func (s *Service) enter(ctx context.Context, f *jobfiles.ServiceFile, now time.Time) error {
	cfg := s.cfg
	info := &f.Service
	successor := info.Successor != nil && info.Successor.JobID == s.me && !info.Ended
	woken := !info.Ended && (info.State == jobfiles.ServiceAsleep || (info.Waking != nil && info.Waking.JobID == s.me))
	if !successor && info.Current != "" && info.Current != s.me && !f.State.Ended() {
		if q, err := s.sched.Queue(ctx, info.Current); err != nil || !q.Ended() {
			return fmt.Errorf("%w: service %s is served by job %s (%s); end it first with llm-agent stop --service %s, or choose another name",
				jobfiles.ErrService, s.name, info.Current, f.State, s.name)
		}
	}
	var submitted *time.Time
	switch {
	case successor:
		if info.Until != nil {
			s.until = *info.Until
		}
		info.Successor.State, info.Successor.Reason = "running", ""
	case woken:
		// The chain goes on where it fell asleep: its end stays, and this job serves it.
		if info.Until != nil {
			s.until = *info.Until
		}
		if w := info.Waking; w != nil && w.JobID == s.me {
			t := w.Submitted
			submitted, s.submitted = &t, &t
		}
		info.State, info.Reason, info.Asleep, info.Successor = jobfiles.ServiceWaking, "job "+s.me+" is starting", nil, nil
		info.Current = s.me
	default:
		// A new chain: the history stays, the rest starts afresh.
		*info = jobfiles.ServiceInfo{Name: s.name, State: jobfiles.ServiceStarting, Jobs: info.Jobs}
		switch {
		case cfg.Until != "":
			s.until, _ = config.ParseUntil(cfg.Until)
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
	j := jobfiles.ServiceJob{JobID: s.me, Node: s.job.Head, StateDir: s.job.StateDir, Started: now.UTC(), Submitted: submitted}
	if successor {
		j.Of = info.Successor.Of
	}
	info.Jobs = append(info.Jobs, j)
	return s.ensureKey()
}

// ensureKey makes the service's key once, for all its jobs, unless the job brings its own.
func (s *Service) ensureKey() error {
	cfg := s.cfg
	if cfg.APIKeyFile != "" || cfg.KeysFile != "" {
		return nil
	}
	path := filepath.Join(s.dir, jobfiles.APIKeyFile)
	if _, err := os.Lstat(path); err == nil {
		return nil
	}
	key, err := gateway.GenerateKey()
	if err != nil {
		return err
	}
	return jobfiles.WriteFileAtomic(path, []byte(key+"\n"), 0o600)
}
