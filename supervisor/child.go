// Package supervisor starts, stops and restarts the agent's child processes: each in its own
// process group behind a reaper, with a restart policy and backoff. It knows nothing of what
// the children are.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// Options describes one child process.
type Options struct {
	// Name is the short name used in logs, metrics and log file names ("vllm", "ray").
	Name string
	// Path is the executable, absolute or looked up in PATH.
	Path string
	// Args are the arguments after the executable.
	Args []string
	// Env is the complete environment; nil inherits the agent's.
	Env []string
	// Dir is the working directory; empty means the agent's.
	Dir string
	// Stdout and Stderr receive the child's output; nil discards it.
	Stdout, Stderr io.Writer
	// Grace is the time between SIGTERM and SIGKILL when the child is stopped; 0 means
	// DefaultGrace.
	Grace time.Duration
	// Reaper is the binary that runs MaybeRunReaper first thing; empty means this executable.
	Reaper string
}

// Exit is how a child ended.
type Exit struct {
	// Code is the exit status; 128+N when signal N ended it.
	Code int
	// Err is set when the child could not be started or waited for.
	Err error
	// Started and Ended bound the run.
	Started, Ended time.Time
	// OOMKilled tells that the kernel's out-of-memory killer ended it: a SIGKILL while the
	// oom_kill count of its memory cgroup rose.
	OOMKilled bool
}

// LooksStopped tells whether the exit is what a stop signal gives: status 0, or the end by
// SIGTERM, SIGINT, SIGHUP or SIGKILL.
func (e Exit) LooksStopped() bool {
	if e.Err != nil || e.OOMKilled {
		return false
	}
	switch e.Code {
	case 0, 128 + int(syscall.SIGTERM), 128 + int(syscall.SIGINT), 128 + int(syscall.SIGHUP), 128 + int(syscall.SIGKILL):
		return true
	}
	return false
}

// String describes the exit for logs.
func (e Exit) String() string {
	switch {
	case e.Err != nil:
		return e.Err.Error()
	case e.OOMKilled:
		return fmt.Sprintf("killed by the out-of-memory killer (exit status %d: its memory cgroup's limit was reached)", e.Code)
	case e.Code > 128 && e.Code < 128+65:
		return fmt.Sprintf("exit status %d (%s)", e.Code, syscall.Signal(e.Code-128))
	default:
		return fmt.Sprintf("exit status %d", e.Code)
	}
}

// Child is one running process, started through the reaper in its own process group.
type Child struct {
	opts Options
	// oom is the oom_kill count of the child's memory cgroup when it started.
	oom *oomCounter

	cmd  *exec.Cmd
	done chan struct{}
	exit Exit

	stopOnce sync.Once
}

// DefaultGrace is the time between SIGTERM and SIGKILL when Options gives none.
const DefaultGrace = 10 * time.Second

// grace is the child's time between SIGTERM and SIGKILL.
func (c *Child) grace() time.Duration {
	if c.opts.Grace > 0 {
		return c.opts.Grace
	}
	return DefaultGrace
}

// ErrNotStarted is returned by a Child's methods that need a process before Start succeeded.
var ErrNotStarted = errors.New("child not started")

// ErrNotFound is returned by Start when the executable does not exist.
var ErrNotFound = errors.New("executable not found")

// New returns a child that is not started yet.
func New(opts Options) *Child {
	return &Child{opts: opts, done: make(chan struct{})}
}

// Start starts the child. Its parent-death signal makes the reaper clean up if the agent dies.
func (c *Child) Start() error {
	path, err := exec.LookPath(c.opts.Path)
	if err != nil {
		return fmt.Errorf("start %s: %w: %q", c.opts.Name, ErrNotFound, c.opts.Path)
	}
	reaper := c.opts.Reaper
	if reaper == "" {
		if reaper, err = os.Executable(); err != nil {
			return fmt.Errorf("start %s: find own executable: %w", c.opts.Name, err)
		}
	}
	env := c.opts.Env
	if env == nil {
		env = os.Environ()
	}
	grace := c.grace()
	cmd := &exec.Cmd{
		Path:   reaper,
		Args:   append([]string{reaper, path}, c.opts.Args...),
		Env:    append(env[:len(env):len(env)], reaperEnv+"="+grace.String()),
		Dir:    c.opts.Dir,
		Stdout: c.opts.Stdout,
		Stderr: c.opts.Stderr,
		SysProcAttr: &syscall.SysProcAttr{
			Setpgid:   true,
			Pdeathsig: syscall.SIGTERM,
		},
		// Output copying must not outlive the process by much even if something kept the pipe.
		WaitDelay: 2 * time.Second,
	}
	runtime.LockOSThread()
	err = cmd.Start()
	runtime.UnlockOSThread()
	if err != nil {
		return fmt.Errorf("start %s: %w", c.opts.Name, err)
	}
	c.cmd = cmd
	c.exit.Started = time.Now()
	c.oom = watchOOM(cmd.Process.Pid)
	go c.wait()
	return nil
}

func (c *Child) wait() {
	err := c.cmd.Wait()
	c.exit.Ended = time.Now()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		ws := ee.Sys().(syscall.WaitStatus)
		if ws.Signaled() {
			c.exit.Code = 128 + int(ws.Signal())
		} else {
			c.exit.Code = ws.ExitStatus()
		}
	default:
		c.exit.Err = fmt.Errorf("wait for %s: %w", c.opts.Name, err)
		c.exit.Code = -1
	}
	c.exit.OOMKilled = c.exit.Code == 128+int(syscall.SIGKILL) && c.oom.killed()
	close(c.done)
}

// Name returns the child's name.
func (c *Child) Name() string { return c.opts.Name }

// PID returns the process id of the child's reaper, which leads its process group.
func (c *Child) PID() int {
	if !c.started() {
		return 0
	}
	return c.cmd.Process.Pid
}

// started tells whether Start has started the process.
func (c *Child) started() bool { return c.cmd != nil && c.cmd.Process != nil }

// Done is closed when the child has exited; before a successful Start it is closed already.
func (c *Child) Done() <-chan struct{} {
	if !c.started() {
		return closed
	}
	return c.done
}

// closed is the Done channel of a child that never started.
var closed = func() chan struct{} { ch := make(chan struct{}); close(ch); return ch }()

// Exit returns how the child ended; valid once Done is closed.
func (c *Child) Exit() Exit {
	if !c.started() {
		return Exit{Err: ErrNotStarted}
	}
	return c.exit
}

// Signal sends sig to the child's reaper, which passes it on to the command and its descendants.
func (c *Child) Signal(sig syscall.Signal) error {
	if !c.started() {
		return ErrNotStarted
	}
	return c.cmd.Process.Signal(sig)
}

// Stop sends SIGTERM, waits the grace period, then kills the whole process group. It returns
// when the child has exited or ctx ends, whichever is first, and is safe to call more than once.
func (c *Child) Stop(ctx context.Context) Exit {
	if !c.started() {
		return c.Exit()
	}
	c.stopOnce.Do(func() {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
	})
	// The reaper kills everything itself after grace; the margin covers a reaper that hangs.
	timer := time.NewTimer(c.grace() + 2*time.Second)
	defer timer.Stop()
	select {
	case <-c.done:
		return c.exit
	case <-timer.C:
	case <-ctx.Done():
	}
	_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
	<-c.done
	return c.exit
}
