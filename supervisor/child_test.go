package supervisor

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// syncBuffer is a bytes.Buffer safe for the output copier and the test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitDone(t *testing.T, c *Child) Exit {
	t.Helper()
	select {
	case <-c.Done():
		return c.Exit()
	case <-time.After(20 * time.Second):
		t.Fatal("child did not exit")
		return Exit{}
	}
}

func TestChildExitCodes(t *testing.T) {
	tests := []struct {
		mode string
		code int
		text string
	}{
		{"exit:0", 0, "exit status 0"},
		{"exit:3", 3, "exit status 3"},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			c := New(helperOptions(t, tt.mode))
			require.NoError(t, c.Start())
			exit := waitDone(t, c)
			assert.Equal(t, tt.code, exit.Code)
			assert.Equal(t, tt.text, exit.String())
		})
	}
}

func TestChildOutput(t *testing.T) {
	var out, errOut syncBuffer
	opts := helperOptions(t, "echo")
	opts.Stdout, opts.Stderr = &out, &errOut
	c := New(opts)
	require.NoError(t, c.Start())
	waitDone(t, c)
	assert.Equal(t, "line one\n", out.String())
	assert.Equal(t, "line two\n", errOut.String())
}

func TestChildNotFound(t *testing.T) {
	c := New(Options{Name: "vllm", Path: "/nonexistent/vllm"})
	err := c.Start()
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrNotFound)
	assert.Contains(t, err.Error(), "/nonexistent/vllm")
}

func TestChildStopGraceful(t *testing.T) {
	c := New(helperOptions(t, "sleep"))
	require.NoError(t, c.Start())
	exit := c.Stop(context.Background())
	assert.Equal(t, 128+int(syscall.SIGTERM), exit.Code, exit.String())
	assert.Contains(t, exit.String(), "terminated")
}

func TestChildStopEscalatesToKill(t *testing.T) {
	var out syncBuffer
	opts := helperOptions(t, "ignore-term")
	opts.Stdout = &out
	c := New(opts)
	require.NoError(t, c.Start())
	require.Eventually(t, func() bool { return strings.Contains(out.String(), "ignoring") }, 10*time.Second, 10*time.Millisecond)
	start := time.Now()
	exit := c.Stop(context.Background())
	assert.Equal(t, 128+int(syscall.SIGKILL), exit.Code, exit.String())
	assert.GreaterOrEqual(t, time.Since(start), opts.Grace)
}

func TestChildSignalPassesThroughReaper(t *testing.T) {
	c := New(helperOptions(t, "sleep"))
	require.NoError(t, c.Start())
	require.NoError(t, c.Signal(syscall.SIGINT))
	exit := waitDone(t, c)
	assert.Equal(t, 128+int(syscall.SIGINT), exit.Code)
}

func readPids(t *testing.T, file string) []int {
	t.Helper()
	var pids []int
	require.Eventually(t, func() bool {
		b, err := os.ReadFile(file)
		if err != nil || !strings.HasSuffix(string(b), "\n") {
			return false
		}
		pids = nil
		for _, f := range strings.Fields(string(b)) {
			n, err := strconv.Atoi(f)
			require.NoError(t, err)
			pids = append(pids, n)
		}
		return true
	}, 20*time.Second, 10*time.Millisecond)
	return pids
}

// TestStopKillsWholeTree stops a child whose own child stayed in the group and whose other child
// escaped with setsid; none may survive.
func TestStopKillsWholeTree(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pids")
	c := New(helperOptions(t, "tree:"+file))
	require.NoError(t, c.Start())
	pids := readPids(t, file)
	require.Len(t, pids, 3)
	c.Stop(context.Background())
	for _, pid := range pids {
		assert.False(t, alive(pid), "pid %d survived Stop", pid)
	}
}

// TestCommandExitCleansLeftovers checks that when the command dies on its own, what it left
// behind is killed too.
func TestCommandExitCleansLeftovers(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pids")
	c := New(helperOptions(t, "tree:"+file))
	require.NoError(t, c.Start())
	pids := readPids(t, file)
	require.NoError(t, syscall.Kill(pids[0], syscall.SIGKILL))
	exit := waitDone(t, c)
	assert.Equal(t, 128+int(syscall.SIGKILL), exit.Code)
	for _, pid := range pids {
		assert.False(t, alive(pid), "pid %d survived the command's death", pid)
	}
}

// TestAgentKilledTakesChildrenAndGrandchildren kills a helper "agent" with SIGKILL, which can
// run no clean-up of its own, and checks that its child and the child's children die anyway.
func TestAgentKilledTakesChildrenAndGrandchildren(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pids")
	agent := helperCmd("agent:" + file)
	stdout, err := agent.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, agent.Start())
	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err)
	reaperPid, err := strconv.Atoi(strings.TrimSpace(line))
	require.NoError(t, err)
	pids := append(readPids(t, file), reaperPid)
	for _, pid := range pids {
		require.True(t, alive(pid))
	}

	require.NoError(t, agent.Process.Kill())
	_ = agent.Wait()
	require.Eventually(t, func() bool {
		for _, pid := range pids {
			if alive(pid) {
				return false
			}
		}
		return true
	}, 15*time.Second, 20*time.Millisecond, "children of a SIGKILLed agent must die")
}

func TestDescendantsReadsProc(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pids")
	c := New(helperOptions(t, "tree:"+file))
	require.NoError(t, c.Start())
	defer c.Stop(context.Background())
	pids := readPids(t, file)
	got := descendants(c.PID())
	assert.Contains(t, got, pids[0])
	assert.Contains(t, got, pids[1])
	// The setsid escapee is still a descendant by parentage.
	assert.Contains(t, got, pids[2])
}

// TestChildBeforeStart: every method of a child that never started answers at once.
func TestChildBeforeStart(t *testing.T) {
	c := New(Options{Name: "never", Path: "/no/such/program"})
	assert.Zero(t, c.PID())
	assert.ErrorIs(t, c.Signal(syscall.SIGTERM), ErrNotStarted)
	select {
	case <-c.Done():
	default:
		t.Fatal("Done of a child that never started is not closed")
	}
	assert.ErrorIs(t, c.Exit().Err, ErrNotStarted)
	assert.ErrorIs(t, c.Stop(context.Background()).Err, ErrNotStarted)
	require.Error(t, c.Start(), "the program does not exist")
	assert.Zero(t, c.PID(), "still not started")
	assert.Equal(t, DefaultGrace, c.grace())
}

// TestUsageOfARealTree reads back what a child and its kid hold: known memory, open files and
// CPU seconds, through the process table.
func TestUsageOfARealTree(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pids")
	c := New(helperOptions(t, "alloc:"+file))
	require.NoError(t, c.Start())
	defer c.Stop(context.Background())
	pids := readPids(t, file)
	require.Len(t, pids, 2)

	u := (&Trees{}).Usage(context.Background(), []int{c.PID()})[c.PID()]
	assert.Equal(t, 2, u.Processes, "the command and its kid; the reaper is left out")
	const mib = 1 << 20
	assert.GreaterOrEqual(t, u.RSS, uint64(2*allocMiB*mib), "both processes' touched memory")
	assert.Less(t, u.RSS, uint64(2*allocMiB*mib+200*mib), "two small Go programs on top")
	assert.GreaterOrEqual(t, u.FDs, 2*(allocFiles+3))
	assert.GreaterOrEqual(t, u.Threads, 2)
	require.Len(t, u.CPU, 2)
	total := 0.0
	for k, v := range u.CPU {
		assert.Contains(t, pids, int(k.PID))
		assert.NotZero(t, k.Created)
		total += v
	}
	// The helpers count their CPU with getrusage, to the nanosecond; /proc samples it in clock
	// ticks, which on a busy machine reads lower.
	assert.GreaterOrEqual(t, total, 2*allocCPU.Seconds()*0.5, "the CPU both spent, as /proc samples it")

	none := (&Trees{}).Usage(context.Background(), []int{pids[1]})[pids[1]]
	assert.Zero(t, none.Processes, "the kid has nothing below it")
}

// TestStopWakesAStoppedChild: a child stopped with SIGSTOP (a hung engine's stand-in) still
// ends on SIGTERM at once, rather than after the grace and a SIGKILL.
func TestStopWakesAStoppedChild(t *testing.T) {
	opts := helperOptions(t, "sleep")
	opts.Grace = 30 * time.Second
	c := New(opts)
	require.NoError(t, c.Start())
	var cmd []int
	require.Eventually(t, func() bool { cmd = descendants(c.PID()); return len(cmd) == 1 }, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, syscall.Kill(cmd[0], syscall.SIGSTOP))
	start := time.Now()
	exit := c.Stop(context.Background())
	assert.Less(t, time.Since(start), 10*time.Second, "not the 30 s grace")
	assert.Equal(t, 128+int(syscall.SIGTERM), exit.Code, "ended by SIGTERM, not SIGKILL")
}

// TestTreesKeepMembers: the whole process table is read again only after Rescan or when the
// roots change; in between, the members' own figures are read fresh.
func TestTreesKeepMembers(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pids")
	a := New(helperOptions(t, "tree:"+file))
	require.NoError(t, a.Start())
	defer a.Stop(context.Background())
	readPids(t, file)
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	trees := &Trees{Rescan: 30 * time.Second, Now: func() time.Time { return now }}
	ctx := context.Background()

	assert.Equal(t, 3, trees.Usage(ctx, []int{a.PID()})[a.PID()].Processes, "the command, its kid and the escapee")
	now = now.Add(29 * time.Second)
	assert.Equal(t, 3, trees.Usage(ctx, []int{a.PID()})[a.PID()].Processes)
	assert.Equal(t, 1, trees.scans, "the members were kept")

	b := New(helperOptions(t, "sleep"))
	require.NoError(t, b.Start())
	defer b.Stop(context.Background())
	require.Eventually(t, func() bool { return len(descendants(b.PID())) == 1 }, 10*time.Second, 10*time.Millisecond)
	got := trees.Usage(ctx, []int{a.PID(), b.PID()})
	assert.Equal(t, 2, trees.scans, "a new root reads the table")
	assert.Equal(t, 1, got[b.PID()].Processes)
	now = now.Add(30 * time.Second)
	trees.Usage(ctx, []int{a.PID(), b.PID()})
	assert.Equal(t, 3, trees.scans, "and so does the passing of Rescan")
}
