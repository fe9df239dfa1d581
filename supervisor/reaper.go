package supervisor

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The reaper is a small shim between the agent and each child command. The agent re-executes its
// own binary with reaperEnv set; that process becomes a child subreaper, starts the command, and
// makes sure that the command and every descendant, including ones that left the process group,
// are gone before it exits. Its parent-death signal is SIGTERM, so even when the agent is killed
// with SIGKILL the reaper still runs its clean-up.
const (
	reaperEnv = "LLM_AGENT_REAPER_GRACE"
	// leftoverGrace is how long descendants that outlive the command get after SIGTERM.
	leftoverGrace = 2 * time.Second
	// orphanGrace bounds the drain when the agent itself has died and nobody waits for it.
	orphanGrace = 5 * time.Second
)

// MaybeRunReaper runs the reaper and exits when this process was started as one; otherwise it
// returns at once. Call it first thing in main and in TestMain of packages that start children.
func MaybeRunReaper() {
	grace, ok := os.LookupEnv(reaperEnv)
	if !ok {
		return
	}
	os.Exit(runReaper(grace, os.Args[1:]))
}

func runReaper(graceText string, argv []string) int {
	os.Unsetenv(reaperEnv)
	grace, err := time.ParseDuration(graceText)
	if err != nil || len(argv) == 0 {
		fmt.Fprintf(os.Stderr, "llm-agent reaper: bad invocation (grace %q, %d args)\n", graceText, len(argv))
		return 126
	}
	parent := os.Getppid()
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintf(os.Stderr, "llm-agent reaper: set child subreaper: %v\n", err)
		return 126
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGCHLD)

	proc, err := startLocked(argv)
	if err != nil {
		fmt.Fprintf(os.Stderr, "llm-agent reaper: start %s: %v\n", argv[0], err)
		return 127
	}
	r := &reaper{self: os.Getpid(), cmd: proc.Pid, exitCode: -1, grace: grace, parent: parent}
	return r.run(sigs)
}

// run forwards a stop signal to the command, reaps, and once the command has ended ends what it
// left behind; it returns the command's exit code when nothing of it is left.
func (r *reaper) run(sigs <-chan os.Signal) int {
	var killAt <-chan time.Time
	poll := time.NewTicker(100 * time.Millisecond)
	defer poll.Stop()
	for {
		select {
		case s := <-sigs:
			if s != syscall.SIGCHLD && !r.terminating {
				killAt = r.terminate(s.(syscall.Signal))
			}
		case <-killAt:
			r.signalAll(syscall.SIGKILL)
			r.killing = true
		case <-poll.C:
		}
		r.reap()
		if r.exitCode < 0 {
			continue
		}
		if len(descendants(r.self)) == 0 {
			return r.exitCode
		}
		if !r.leftovers {
			// The command has ended; whatever it left behind gets SIGTERM and a short grace.
			r.leftovers, r.terminating = true, true
			r.signalAll(syscall.SIGTERM)
			killAt = time.After(leftoverGrace)
		}
		if r.killing {
			r.signalAll(syscall.SIGKILL)
		}
	}
}

// terminate passes sig on to the command, which gets the grace period to stop its own children
// (as `ray start --block` and vLLM's server do); whatever is left is killed when the returned
// channel fires. An orphaned reaper, whose agent is gone, waits less.
func (r *reaper) terminate(sig syscall.Signal) <-chan time.Time {
	r.terminating = true
	g := r.grace
	if os.Getppid() != r.parent {
		g = min(r.grace, orphanGrace)
	}
	_ = syscall.Kill(r.cmd, sig)
	// A stopped command (SIGSTOP, a hung engine's test) acts on the signal only once it runs
	// again, as systemd does after its stop signal.
	_ = syscall.Kill(r.cmd, syscall.SIGCONT)
	return time.After(g)
}

type reaper struct {
	// grace is the command's time to stop; parent is the agent that started the reaper.
	grace       time.Duration
	parent      int
	self, cmd   int
	exitCode    int
	terminating bool
	leftovers   bool
	killing     bool
}

// reap collects every exited child without blocking and records the command's status.
func (r *reaper) reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
		if pid == r.cmd {
			switch {
			case ws.Exited():
				r.exitCode = ws.ExitStatus()
			case ws.Signaled():
				r.exitCode = 128 + int(ws.Signal())
			default:
				r.exitCode = 1
			}
		}
	}
}

func (r *reaper) signalAll(sig syscall.Signal) {
	for _, pid := range descendants(r.self) {
		_ = syscall.Kill(pid, sig)
		if sig != syscall.SIGKILL {
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}
}

// startLocked starts argv in the reaper's process group with SIGKILL as its parent-death signal.
// The OS thread is locked because the kernel ties that signal to the thread that forked
// (golang/go#27505).
func startLocked(argv []string) (*os.Process, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	path := argv[0]
	if !strings.Contains(path, "/") {
		found, err := exec.LookPath(path)
		if err != nil {
			return nil, err
		}
		path = found
	}
	return os.StartProcess(path, argv, &os.ProcAttr{
		Files: []*os.File{os.Stdin, os.Stdout, os.Stderr},
		Sys:   &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL},
	})
}
