package service

// A job added under load (--max-jobs): one more engine behind the service's endpoint. It joins
// only as the entry the serving job made for it when it queued it, serves behind a gateway that
// opens to the service's replica key alone (the serving job's gateway authenticates, limits
// and audits the clients), and ends when the serving job cancels it, or when the service no
// longer runs.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// ReplicaKeyFile is the service's key between its serving job's gateway and its extra jobs'
// (0600, in the service's folder, made by the serving job before it adds one).
const ReplicaKeyFile = "replica_key"

// Extra tells whether the job is one the serving job added under load.
func (s *Service) Extra() bool { return s.cfg.ExtraOf != "" }

// ReplicaKeyFile is the service's replica key's file.
func (s *Service) ReplicaKeyFile() string { return filepath.Join(s.dir, ReplicaKeyFile) }

// enterExtra enters an added job: its entry must be there, made by the job that queued it.
func (s *Service) enterExtra(f *jobfiles.ServiceFile) error {
	info := &f.Service
	x := info.Extra(s.me)
	if x == nil || x.Of != s.cfg.ExtraOf || info.Ended {
		return fmt.Errorf("%w: job %s was not added to service %s by job %s (--extra-of is set by the serving job, not by hand)",
			jobfiles.ErrService, s.me, s.name, s.cfg.ExtraOf)
	}
	if _, err := os.Lstat(s.ReplicaKeyFile()); err != nil {
		return fmt.Errorf("%w: service %s has no replica key: %w", jobfiles.ErrService, s.name, err)
	}
	x.State, x.Node = jobfiles.ExtraStarting, s.job.Head
	return nil
}

// mirrorExtra keeps the added job's entry true: ready, with where its gateway listens, while its
// engine serves.
func (s *Service) mirrorExtra(c jobfiles.Connection) {
	s.update(func(f *jobfiles.ServiceFile) {
		x := f.Service.Extra(s.me)
		if x == nil || x.State == jobfiles.ExtraDraining {
			return
		}
		if c.State != jobfiles.StateReady {
			x.State = jobfiles.ExtraStarting
			return
		}
		if x.State != jobfiles.ExtraReady {
			now := s.clock.Now().UTC()
			x.Ready = &now
		}
		x.State, x.Address, x.Port = jobfiles.ExtraReady, c.HeadAddress, c.Port
		for _, m := range c.Metrics {
			if m.Role == "head" {
				x.EngineMetricsURL = m.EngineMetricsURL
			}
		}
	})
}

// watchExtra runs until the service no longer needs the added job: it ended, fell asleep, or
// dropped the job's entry. It returns why; "" when ctx ended first.
func (s *Service) watchExtra(ctx context.Context) string {
	for {
		select {
		case <-ctx.Done():
			return ""
		case <-s.clock.After(s.timings.Poll):
		}
		f, err := jobfiles.ReadService(s.dir)
		switch {
		case err != nil:
			s.log.Warn("cannot read the service's file", "service", s.name, "error", err)
		case f.Service.Ended || f.Service.State == jobfiles.ServiceAsleep:
			return "the service " + f.Service.State + ": the added job ends"
		case f.Service.Extra(s.me) == nil:
			return "the service no longer needs this added job"
		}
	}
}

// endExtra takes the added job out of the service's file.
func (s *Service) endExtra() {
	_, err := jobfiles.UpdateService(s.dir, func(f *jobfiles.ServiceFile) error {
		f.Service.DropExtra(s.me)
		return nil
	})
	if err != nil {
		s.log.Warn("cannot update the service's file", "service", s.name, "error", err)
	}
}
