package service

// The service's file while a job of it runs: the job's connection mirrored into it, and
// the job's end.

import (
	"fmt"
	"strings"
	"time"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// Mirror copies the job's connection into the service's file while the job is the service's
// current one; a ready successor becomes the current one. It runs on every write of the
// job's connection file.
func (s *Service) Mirror(c jobfiles.Connection) {
	if s.Extra() {
		s.mirrorExtra(c)
		return
	}
	_, err := jobfiles.UpdateService(s.dir, func(f *jobfiles.ServiceFile) error {
		info := &f.Service
		if j := info.Job(s.me); j != nil && c.ReadyAt != nil && j.Ready == nil {
			j.Ready = c.ReadyAt
			s.wokenReady(j.Started, *c.ReadyAt)
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
			info.State, info.Reason, info.Waking = jobfiles.ServiceServing, "", nil
		case c.State == jobfiles.StateStarting:
			info.State, info.Reason = jobfiles.ServiceStarting, c.Reason
		case !c.State.Ended():
			info.State, info.Reason = string(c.State), c.Reason
		}
		return nil
	})
	if err != nil {
		s.log.Warn("cannot update the service's file", "service", s.name, "error", err)
	}
}

// connection is the job's connection as the service's file holds it: the tunnel command a
// laptop runs follows the service, not this job.
func (s *Service) connection(c jobfiles.Connection) jobfiles.Connection {
	if c.Tunnel != "" {
		c.Tunnel = strings.TrimSuffix(c.Tunnel, " "+c.JobID) + " --service " + s.name
	}
	return c
}

// End writes the job's end into the service's file: the history, and, when the job was the
// current one, what the service does now (wait for the successor, or end).
func (s *Service) End(c jobfiles.Connection, why string) {
	if s.Extra() {
		s.endExtra()
		return
	}
	now := s.clock.Now().UTC()
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
		case s.asleep.Load():
			info.State, info.Reason, info.Asleep, info.Successor = jobfiles.ServiceAsleep, why, &now, nil
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
		s.log.Warn("cannot update the service's file", "service", s.name, "error", err)
	}
}

// update changes the service's file, unless the chain has ended meanwhile.
func (s *Service) update(f func(f *jobfiles.ServiceFile)) {
	_, err := jobfiles.UpdateService(s.dir, func(sf *jobfiles.ServiceFile) error {
		if sf.Service.Ended {
			return nil
		}
		f(sf)
		return nil
	})
	if err != nil {
		s.log.Warn("cannot update the service's file", "service", s.name, "error", err)
	}
}

// wokenReady records the cold start of a job a wake queued, once it is ready.
func (s *Service) wokenReady(started, ready time.Time) {
	if s.submitted == nil {
		return
	}
	s.cold.mu.Lock()
	defer s.cold.mu.Unlock()
	s.cold.running, s.cold.ready, s.cold.known = started.Sub(*s.submitted), ready.Sub(*s.submitted), true
	s.log.Info("woken", "service", s.name, "queued_for", s.cold.running.Round(time.Second), "ready_after", s.cold.ready.Round(time.Second))
}
