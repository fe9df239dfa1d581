package supervisor

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/llm-agent/llm-agent/clock"
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
	_, state, ok := readStat(pid)
	return ok && state != 'Z'
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
