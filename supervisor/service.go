package supervisor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/llm-agent/llm-agent/clock"
)

// State is where a supervised service is in its life.
type State string

// The states a service reports through OnEvent.
const (
	StateStarting State = "starting"
	StateRunning  State = "running"
	StateBackoff  State = "backoff"
	StateStopping State = "stopping"
	StateStopped  State = "stopped"
	StateFailed   State = "failed"
)

// States are every state a service can be in, in the order of its life.
var States = []State{StateStarting, StateRunning, StateBackoff, StateStopping, StateStopped, StateFailed}

// Restart reasons, used as metric labels.
const (
	ReasonExited = "exited"
)

// Event reports a change of a service's state.
type Event struct {
	Service string
	State   State
	// Reason is why the service left its previous state, in words.
	Reason string
	// Cause is the short, label-safe restart reason ("exited", "unhealthy", ...), set with
	// StateBackoff.
	Cause string
	// Restarts counts restarts since the service was created.
	Restarts int
	// PID is the child's process id while it runs.
	PID int
	// Delay is the backoff before the next start, with StateBackoff.
	Delay time.Duration
}

// ErrGaveUp is returned by Run when the restart policy gives up.
var ErrGaveUp = errors.New("gave up restarting")

// ServiceOptions configure a Service.
type ServiceOptions struct {
	// Name names the service in logs and events.
	Name string
	// Command returns the options of the next child to start; it is called before every start.
	Command func() (Options, error)
	// Policy decides on restarts; the zero Policy means DefaultPolicy.
	Policy Policy
	// Rand spreads the backoff delays (tests fix it); nil means math/rand.
	Rand func() float64
	// Clock times the backoff; nil means the wall clock.
	Clock clock.Clock
	// Logger receives the service's own log lines.
	Logger hclog.Logger
	// Before, if set, runs before every start and must return nil for the start to go ahead; an
	// error ends Run with that error. The Ray gate of the engine lives here.
	Before func(ctx context.Context) error
	// OnEvent, if set, is told of every state change. It must not block.
	OnEvent func(Event)
	// Stopping, if set, tells whether the owner is stopping on purpose. A child that ends then
	// (Slurm signals every process of a job step at once, so the child may end before Run's
	// context does) is stopped, not crashed: it is neither restarted nor counted.
	Stopping func() bool
	// StopSettle is how long a child's end that looks like a stop (exit 0, or ended by SIGTERM,
	// SIGINT, SIGHUP or SIGKILL) waits for Stopping to tell so before it counts as a crash: the
	// signal that reached the child at once may reach the owner a moment later. Zero: no wait.
	StopSettle time.Duration
}

// Service keeps one child running: it restarts it with backoff when it exits or when Restart is
// called, and gives up when the policy says so.
type Service struct {
	opts     ServiceOptions
	tracker  *Tracker
	restart  chan restartRequest
	restarts int
}

type restartRequest struct{ cause, reason string }

// NewService returns a service that is not running yet.
func NewService(opts ServiceOptions) *Service {
	if opts.Policy == (Policy{}) {
		opts.Policy = DefaultPolicy()
	}
	if opts.Clock == nil {
		opts.Clock = clock.Real{}
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	return &Service{opts: opts, tracker: NewTracker(opts.Policy, opts.Rand), restart: make(chan restartRequest, 1)}
}

// Restart asks for the running child to be stopped and started again. cause is a short label
// ("unhealthy"), reason a sentence for the log. A request while one is pending is dropped.
func (s *Service) Restart(cause, reason string) {
	select {
	case s.restart <- restartRequest{cause, reason}:
	default:
	}
}

func (s *Service) emit(e Event) {
	e.Service = s.opts.Name
	e.Restarts = s.restarts
	if s.opts.OnEvent != nil {
		s.opts.OnEvent(e)
	}
}

// Run supervises the child until ctx ends, which stops it and returns nil, or until the policy
// gives up or a start fails, which returns the error.
func (s *Service) Run(ctx context.Context) error {
	log := s.opts.Logger
	for {
		// Drop a restart request that arrived while nothing was running.
		select {
		case <-s.restart:
		default:
		}
		child, started, err := s.start(ctx)
		if child == nil {
			return err // nil: stopped before the start
		}
		cause, end, stopped := s.await(ctx, child)
		if stopped {
			return nil
		}
		if s.endedByStop(ctx, end) {
			log.Info("ended while stopping", "exit", end.String())
			s.emit(Event{State: StateStopped, Reason: "ended while stopping: " + end.String()})
			return nil
		}
		d := s.tracker.Decide(end, started, s.opts.Clock.Now())
		if !d.Restart {
			log.Error("giving up", "reason", d.Reason)
			s.emit(Event{State: StateFailed, Reason: d.Reason})
			return fmt.Errorf("%s: %w: %s", s.opts.Name, ErrGaveUp, d.Reason)
		}
		s.restarts++
		log.Warn("restarting", "reason", d.Reason)
		s.emit(Event{State: StateBackoff, Reason: end.String(), Cause: cause, Delay: d.Delay})
		select {
		case <-ctx.Done():
			s.emit(Event{State: StateStopped, Reason: "shutdown"})
			return nil
		case <-s.opts.Clock.After(d.Delay):
		}
	}
}

// stopPoll is how often endedByStop looks for the owner's stop while it settles.
const stopPoll = 20 * time.Millisecond

// endedByStop tells whether the child ended because its owner is stopping: Stopping says so,
// or, for an end that looks like a stop, comes to say so within StopSettle (or ctx ends).
func (s *Service) endedByStop(ctx context.Context, end Ending) bool {
	if s.opts.Stopping == nil {
		return false
	}
	if s.opts.Stopping() {
		return true
	}
	if s.opts.StopSettle <= 0 || end.Requested != "" || !end.Exit.LooksStopped() {
		return false
	}
	deadline := s.opts.Clock.Now().Add(s.opts.StopSettle)
	for {
		left := deadline.Sub(s.opts.Clock.Now())
		if left <= 0 {
			return false
		}
		select {
		case <-ctx.Done():
			return true
		case <-s.opts.Clock.After(min(stopPoll, left)):
		}
		if s.opts.Stopping() {
			return true
		}
	}
}

// start passes the Before gate and starts the next child. A nil child with a nil error means
// ctx ended at the gate.
func (s *Service) start(ctx context.Context) (*Child, time.Time, error) {
	if s.opts.Before != nil {
		if err := s.opts.Before(ctx); err != nil {
			if ctx.Err() != nil {
				s.emit(Event{State: StateStopped, Reason: "stopped before start"})
				return nil, time.Time{}, nil
			}
			s.emit(Event{State: StateFailed, Reason: err.Error()})
			return nil, time.Time{}, err
		}
	}
	opts, err := s.opts.Command()
	if err != nil {
		s.emit(Event{State: StateFailed, Reason: err.Error()})
		return nil, time.Time{}, fmt.Errorf("prepare %s: %w", s.opts.Name, err)
	}
	s.emit(Event{State: StateStarting})
	child := New(opts)
	started := s.opts.Clock.Now()
	if err := child.Start(); err != nil {
		s.emit(Event{State: StateFailed, Reason: err.Error()})
		return nil, time.Time{}, err
	}
	s.opts.Logger.Info("started", "pid", child.PID(), "path", opts.Path)
	s.emit(Event{State: StateRunning, PID: child.PID()})
	return child, started, nil
}

// await waits for the child to end, a restart to be asked for, or ctx to end; stopped is true
// in the last case, once the child is down.
func (s *Service) await(ctx context.Context, child *Child) (cause string, end Ending, stopped bool) {
	log := s.opts.Logger
	select {
	case <-ctx.Done():
		s.emit(Event{State: StateStopping, Reason: "shutdown"})
		exit := child.Stop(context.WithoutCancel(ctx))
		log.Info("stopped", "exit", exit.String())
		s.emit(Event{State: StateStopped, Reason: "shutdown"})
		return "", Ending{}, true
	case <-child.Done():
		return ReasonExited, Ending{Exit: child.Exit()}, false
	case req := <-s.restart:
		s.emit(Event{State: StateStopping, Reason: req.reason})
		end = Ending{Exit: child.Stop(ctx), Requested: req.reason}
		log.Info("stopped for restart", "reason", req.reason, "exit", end.Exit.String())
		return req.cause, end, false
	}
}
