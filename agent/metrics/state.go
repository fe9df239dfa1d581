// Package metrics holds the agent's live state and serves it, with the GPU and engine
// collectors, on each node's metrics port: /metrics, /healthz and /readyz. It knows nothing of
// how the state comes about: the run sets it.
package metrics

import (
	"maps"
	"sync"
	"time"

	"github.com/llm-agent/llm-agent/supervisor"
)

// ChildState is one supervised child as the metrics see it.
type ChildState struct {
	// State is the supervisor's state of the child.
	State supervisor.State
	// Restarts counts restarts by cause ("exited", "unhealthy", "ray_node_lost").
	Restarts map[string]int
	// Since is when the child last started; zero while it is not running.
	Since time.Time
	// PID is the child's process id (its reaper's) while it runs, else 0.
	PID int
}

// State is the agent's live state, shared by the run loop (writer) and the collectors and
// health handlers (readers).
type State struct {
	mu sync.Mutex

	node, job, role string
	gpus            int
	suFactor        float64
	started         time.Time
	endTime         time.Time

	children     map[string]*ChildState
	rayAlive     int
	rayExpected  int
	ready        bool
	readyAt      time.Time
	firstReadyAt time.Time
	readyReason  string
	preps        map[string]Prep
	writes       map[string]FileWrites
}

// Prep is this node's preparation of the model in one phase: PrepVerify or PrepStage.
type Prep struct {
	// Bytes were read (hashed, or copied and hashed) of Total; Seconds it took so far.
	Bytes, Total int64
	Seconds      float64
}

// The phases of a model's preparation.
const (
	PrepVerify = "verify"
	PrepStage  = "stage"
)

// SetPrep records how a phase of the model's preparation stands.
func (s *State) SetPrep(phase string, p Prep) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.preps == nil {
		s.preps = map[string]Prep{}
	}
	s.preps[phase] = p
}

// NewState returns the state of a node's agent. gpus is the number of GPUs the whole job holds,
// which the service units are charged on; end is the job's end time, zero if unknown.
func NewState(node, job, role string, gpus int, suFactor float64, started, end time.Time) *State {
	return &State{node: node, job: job, role: role, gpus: gpus, suFactor: suFactor,
		started: started, endTime: end, children: map[string]*ChildState{}, readyReason: "starting"}
}

// Labels returns the node, job and role of this agent.
func (s *State) Labels() (node, job, role string) { return s.node, s.job, s.role }

// SetChild records a child's state; running resets its uptime clock.
func (s *State) SetChild(name string, state supervisor.State, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.child(name)
	if state == supervisor.StateRunning && c.State != supervisor.StateRunning {
		c.Since = now
	} else if state != supervisor.StateRunning {
		c.Since = time.Time{}
	}
	c.State = state
}

// SetPID records the process id of a running child; 0 when it is not running.
func (s *State) SetPID(name string, pid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.child(name).PID = pid
}

// AddRestart counts one restart of a child for cause.
func (s *State) AddRestart(name, cause string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.child(name).Restarts[cause]++
}

func (s *State) child(name string) *ChildState {
	c, ok := s.children[name]
	if !ok {
		c = &ChildState{Restarts: map[string]int{}}
		s.children[name] = c
	}
	return c
}

// SetRayNodes records how many Ray nodes are alive against how many the job expects.
func (s *State) SetRayNodes(alive, expected int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rayAlive, s.rayExpected = alive, expected
}

// SetReady records whether this node's part of the service is ready, and why not.
func (s *State) SetReady(ready bool, reason string, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ready && !s.ready {
		s.readyAt = now
		if s.firstReadyAt.IsZero() {
			s.firstReadyAt = now
		}
	}
	s.ready = ready
	s.readyReason = reason
}

// Ready reports readiness and, when not ready, why.
func (s *State) Ready() (bool, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ready, s.readyReason
}

// Snapshot is a consistent copy of the state for one scrape.
type Snapshot struct {
	Node, Job, Role       string
	GPUs                  int
	SUFactor              float64
	Started, EndTime      time.Time
	Children              map[string]ChildState
	RayAlive, RayExpected int
	Ready                 bool
	ReadyAt, FirstReadyAt time.Time
	Preps                 map[string]Prep
}

// Snapshot copies the state.
func (s *State) Snapshot() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := Snapshot{Node: s.node, Job: s.job, Role: s.role, GPUs: s.gpus, SUFactor: s.suFactor,
		Started: s.started, EndTime: s.endTime, RayAlive: s.rayAlive, RayExpected: s.rayExpected,
		Ready: s.ready, ReadyAt: s.readyAt, FirstReadyAt: s.firstReadyAt, Children: map[string]ChildState{},
		Preps: maps.Clone(s.preps)}
	for name, c := range s.children {
		snap.Children[name] = ChildState{State: c.State, Restarts: maps.Clone(c.Restarts), Since: c.Since, PID: c.PID}
	}
	return snap
}
