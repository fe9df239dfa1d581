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
	"time"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/jobfiles"
)

// ErrService is wrapped by a service that cannot be joined: its name, or another job of the
// same name serving.
var ErrService = jobfiles.ErrService

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
	_, err := jobfiles.UpdateService(s.dir, func(f *jobfiles.ServiceFile) error { return s.enter(ctx, f, now) })
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

// enter enters the job in the service's file f: as the successor the chain queued, or as the
// first job of a new chain; a job of the same name that still serves refuses it.
func (s *service) enter(ctx context.Context, f *jobfiles.ServiceFile, now time.Time) error {
	cfg := s.h.cfg
	info := &f.Service
	successor := info.Successor != nil && info.Successor.JobID == s.me && !info.Ended
	if !successor && info.Current != "" && info.Current != s.me && !f.State.Ended() {
		if q, err := s.h.deps.Scheduler.Queue(ctx, info.Current); err != nil || !q.Ended() {
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
	j := jobfiles.ServiceJob{JobID: s.me, Node: s.h.alloc.Head(), StateDir: s.h.stateDir, Started: now.UTC()}
	if successor {
		j.Of = info.Successor.Of
	}
	info.Jobs = append(info.Jobs, j)
	return s.ensureKey()
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
		case info.Ended && !c.State.Ended():
			info.State = jobfiles.ServiceStopping
		case c.State == jobfiles.StateReady:
			info.State, info.Reason = jobfiles.ServiceServing, ""
		case c.State == jobfiles.StateStarting:
			info.State, info.Reason = jobfiles.ServiceStarting, c.Reason
		case !c.State.Ended():
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
