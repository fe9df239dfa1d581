package head

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/lifecycle"
	"github.com/llm-agent/llm-agent/agent/service"
	"github.com/llm-agent/llm-agent/jobfiles"
)

// joinService enters the job in its service's file (service.Join). It runs before the keys: a
// service keeps one key for all its jobs, in its folder.
func (h *head) joinService(ctx context.Context) error {
	cfg := h.env.Cfg
	if cfg.Service == "" {
		return nil
	}
	home := h.env.Getenv("HOME")
	if home == "" {
		return fmt.Errorf("%w: HOME is unset; a service keeps its files in ~/%s", config.ErrBadInput, jobfiles.ServicesDir)
	}
	s, err := service.Join(ctx, service.Options{Dir: jobfiles.ServiceDir(home, cfg.Service), Config: cfg,
		Job:       service.Job{ID: h.env.Alloc.JobID, Head: h.env.Alloc.Head(), StateDir: h.env.StateDir, End: h.env.Alloc.EndTime},
		Scheduler: h.opts.Scheduler, Args: h.opts.Args, Clock: h.env.Clock, Log: h.env.Log, Timings: h.opts.Timings})
	if err != nil {
		if errors.Is(err, jobfiles.ErrService) {
			return fmt.Errorf("%w: %w", config.ErrBadInput, err)
		}
		return err
	}
	h.service = s
	h.env.Log.Info("serving as service", "service", s.Name(), "until", s.Until(), "handover", cfg.Handover, "file", filepath.Join(s.Dir(), jobfiles.ConnectionFile))
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
		if gw := h.front.Gateway(); gw != nil { // with --gateway=false there is no port to hand over
			front = gw
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

// serviceDir is the service's folder; empty for a job alone.
func (h *head) serviceDir() string {
	if h.service == nil {
		return ""
	}
	return h.service.Dir()
}
