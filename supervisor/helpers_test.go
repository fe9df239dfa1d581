package supervisor

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/llm-agent/llm-agent/clock"
	"github.com/shirou/gopsutil/v4/process"
)

// Child processes in these tests are this test binary run again in a helper mode chosen by
// helperEnv, as os/exec's own tests do.
const helperEnv = "SUPERVISOR_TEST_HELPER"

func TestMain(m *testing.M) {
	MaybeRunReaper()
	if mode, ok := os.LookupEnv(helperEnv); ok {
		os.Exit(helperMain(mode))
	}
	os.Exit(m.Run())
}

func helperMain(mode string) int {
	name, arg, _ := strings.Cut(mode, ":")
	switch name {
	case "exit":
		n, _ := strconv.Atoi(arg)
		return n
	case "sleep":
		select {}
	case "ignore-term":
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("ignoring SIGTERM")
		select {}
	case "echo":
		fmt.Fprintln(os.Stdout, "line one")
		fmt.Fprintln(os.Stderr, "line two")
		return 0
	case "tree":
		// A child in our process group, and a grandchild that escapes it with setsid.
		kid := helperCmd("sleep")
		escapee := helperCmd("sleep")
		escapee.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := kid.Start(); err != nil {
			return 3
		}
		if err := escapee.Start(); err != nil {
			return 3
		}
		pids := fmt.Sprintf("%d %d %d\n", os.Getpid(), kid.Process.Pid, escapee.Process.Pid)
		if err := os.WriteFile(arg, []byte(pids), 0o644); err != nil {
			return 3
		}
		select {}
	case "alloc":
		// Holds allocMiB of touched memory and a handful of open files, spends CPU, starts
		// a kid that does the same, then writes both pids and blocks.
		kid := helperCmd("alloc-kid")
		if err := kid.Start(); err != nil {
			return 3
		}
		holdMemoryAndFiles()
		if err := os.WriteFile(arg, fmt.Appendf(nil, "%d %d\n", os.Getpid(), kid.Process.Pid), 0o644); err != nil {
			return 3
		}
		select {}
	case "alloc-kid":
		holdMemoryAndFiles()
		select {}
	case "agent":
		// Plays the agent: starts a supervised tree and blocks until killed.
		self, _ := os.Executable()
		c := New(Options{Name: "tree", Path: self, Env: helperEnvList("tree:" + arg), Grace: time.Second})
		if err := c.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 3
		}
		fmt.Println(c.PID())
		select {}
	}
	return 99
}

// Each process of the "alloc" helper holds allocMiB of memory, allocFiles extra open files,
// and allocCPU of CPU time spent.
const (
	allocMiB   = 48
	allocFiles = 10
	allocCPU   = 200 * time.Millisecond
)

var (
	held      [][]byte
	heldFiles []*os.File // kept, or the finalizers close them
)

func holdMemoryAndFiles() {
	b := make([]byte, allocMiB<<20)
	for i := 0; i < len(b); i += 4096 {
		b[i] = 1
	}
	held = append(held, b)
	for range allocFiles {
		f, _ := os.Open(os.DevNull)
		heldFiles = append(heldFiles, f)
	}
	start := time.Now()
	var cpu syscall.Rusage
	for x := 0; ; x++ {
		if x%100000 == 0 {
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &cpu)
			if time.Duration(cpu.Utime.Nano()+cpu.Stime.Nano()) >= allocCPU || time.Since(start) > time.Minute {
				return
			}
		}
	}
}

func helperEnvList(mode string) []string {
	return append(os.Environ(), helperEnv+"="+mode)
}

func helperCmd(mode string) *exec.Cmd {
	self, _ := os.Executable()
	cmd := exec.Command(self)
	cmd.Env = helperEnvList(mode)
	return cmd
}

func helperOptions(t *testing.T, mode string) Options {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return Options{Name: "helper", Path: self, Env: helperEnvList(mode), Grace: 500 * time.Millisecond}
}

func alive(pid int) bool {
	st, err := (&process.Process{Pid: int32(pid)}).Status()
	return err == nil && !slices.Contains(st, process.Zombie)
}

// fakeClock is the shared fake clock, with a wait for the code under test to set a timer.
type fakeClock struct{ *clock.Fake }

func newFakeClock() fakeClock { return fakeClock{clock.NewFake()} }

// waitForTimer blocks until some code has asked the clock for a timer.
func (f fakeClock) waitForTimer(t *testing.T) {
	t.Helper()
	select {
	case <-f.Timers():
	case <-time.After(10 * time.Second):
		t.Fatal("no timer was set")
	}
}
