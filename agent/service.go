package agent

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/llm-agent/llm-agent/agent/lifecycle"
	"github.com/llm-agent/llm-agent/agent/service"
	"github.com/llm-agent/llm-agent/jobfiles"
)

// ErrService is wrapped by a service that cannot be joined: its name, or another job of the
// same name serving.
var ErrService = jobfiles.ErrService

// joinService enters the job in its service's file (service.Join). It runs before the keys: a
// service keeps one key for all its jobs, in its folder.
func (h *head) joinService(ctx context.Context) error {
	cfg := h.cfg
	if cfg.Service == "" {
		return nil
	}
	home := h.deps.Getenv("HOME")
	if home == "" {
		return fmt.Errorf("%w: HOME is unset; a service keeps its files in ~/%s", ErrBadInput, jobfiles.ServicesDir)
	}
	s, err := service.Join(ctx, service.Options{Dir: jobfiles.ServiceDir(home, cfg.Service), Config: cfg,
		Job:       service.Job{ID: h.alloc.JobID, Head: h.alloc.Head(), StateDir: h.stateDir, End: h.alloc.EndTime},
		Scheduler: h.deps.Scheduler, Args: h.deps.Args, Clock: h.deps.Clock, Log: h.log, Timings: h.deps.ServiceTimings})
	if err != nil {
		if errors.Is(err, ErrService) {
			return fmt.Errorf("%w: %w", ErrBadInput, err)
		}
		return err
	}
	h.service = s
	h.log.Info("serving as service", "service", s.Name(), "until", s.Until(), "handover", cfg.Handover, "file", filepath.Join(s.Dir(), jobfiles.ConnectionFile))
	return nil
}

// serviceStage watches the service while the job runs: it queues the successor once the job
// is ready, follows it in the queue, hands over once it serves, and ends the job before its
// time limit. The stage ends (a clean stop) when the job has handed over or its time is up.
func (h *head) serviceStage(run context.Context) lifecycle.Stage {
	if h.service == nil {
		return lifecycle.Stage{Name: "service", Start: func(context.Context) (<-chan error, error) { return nil, nil }}
	}
	var stop func()
	return lifecycle.Stage{Name: "service", Start: func(context.Context) (<-chan error, error) {
		var front service.Front
		if h.front.gw != nil { // with --gateway=false there is no port to hand over
			front = h.front.gw
		}
		done := make(chan error, 1)
		stop = lifecycle.Background(run, func(ctx context.Context) {
			if why := h.service.Watch(ctx, h.conn.EverReady, front); why != "" {
				h.stopReason.Store(&why)
				done <- nil
			}
		})
		return done, nil
	}, Stop: func() { stop() }}
}
