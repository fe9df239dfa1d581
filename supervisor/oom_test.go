package supervisor

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeCgroups points cgroupRoot at a copy of this process's memory cgroup files holding
// oom_kill count n, and returns the file to bump.
func fakeCgroups(t *testing.T, n int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/cgroup")
	require.NoError(t, err)
	root := t.TempDir()
	old := cgroupRoot
	cgroupRoot = root
	t.Cleanup(func() { cgroupRoot = old })
	var file string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		switch {
		case strings.Contains(","+parts[1]+",", ",memory,"):
			file = filepath.Join(root, "memory", parts[2], "memory.oom_control")
		case parts[0] == "0" && parts[1] == "" && file == "":
			file = filepath.Join(root, parts[2], "memory.events")
		}
	}
	require.NotEmpty(t, file, "no memory cgroup in /proc/self/cgroup:\n%s", b)
	require.NoError(t, os.MkdirAll(filepath.Dir(file), 0o755))
	writeOOM(t, file, n)
	return file
}

func writeOOM(t *testing.T, file string, n int) {
	require.NoError(t, os.WriteFile(file, []byte(fmt.Sprintf("oom_kill_disable 0\nunder_oom 0\noom_kill %d\n", n)), 0o644))
}

// TestOOMKilledChild: a child killed by SIGKILL while its memory cgroup's oom_kill count rose
// ended by the out-of-memory killer, and says so; one killed so without the count rising, or
// one that crashed with the count rising, did not.
func TestOOMKilledChild(t *testing.T) {
	file := fakeCgroups(t, 2)
	run := func(kill bool, bump bool) Exit {
		c := New(helperOptions(t, "sleep"))
		require.NoError(t, c.Start())
		if bump {
			writeOOM(t, file, 3) // the kernel counts the kill, then sends SIGKILL
		}
		if kill {
			require.NoError(t, syscall.Kill(c.PID(), syscall.SIGKILL))
		} else {
			require.NoError(t, c.Signal(syscall.SIGSEGV))
		}
		return waitDone(t, c)
	}
	oom := run(true, true)
	assert.True(t, oom.OOMKilled)
	assert.Equal(t, 137, oom.Code)
	assert.Equal(t, "killed by the out-of-memory killer (exit status 137: its memory cgroup's limit was reached)", oom.String())
	assert.False(t, oom.LooksStopped(), "the out-of-memory killer is not a stop")

	writeOOM(t, file, 3)
	killed := run(true, false)
	assert.False(t, killed.OOMKilled, "kill -9 by someone else")
	assert.True(t, killed.LooksStopped())
	crashed := run(false, true)
	assert.False(t, crashed.OOMKilled, "not a SIGKILL")
}

// TestOOMCountersOfBothCgroupVersions: the count is read from v1's memory.oom_control and v2's
// memory.events, and nowhere without a memory cgroup.
func TestOOMCountersOfBothCgroupVersions(t *testing.T) {
	root, proc := t.TempDir(), t.TempDir()
	oldRoot, oldProc := cgroupRoot, procRoot
	cgroupRoot, procRoot = root, proc
	t.Cleanup(func() { cgroupRoot, procRoot = oldRoot, oldProc })
	write := func(path, body string) {
		require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
		require.NoError(t, os.WriteFile(path, []byte(body), 0o644))
	}
	write(filepath.Join(proc, "10", "cgroup"), "4:memory:/slurm/uid_1/job_7/step_0\n0::/\n")
	write(filepath.Join(root, "memory", "slurm/uid_1/job_7/step_0", "memory.oom_control"), "oom_kill_disable 0\noom_kill 1\n")
	write(filepath.Join(proc, "20", "cgroup"), "0::/system.slice/slurmstepd.scope/job_7/step_0\n")
	write(filepath.Join(root, "system.slice/slurmstepd.scope/job_7/step_0", "memory.events"), "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
	write(filepath.Join(proc, "30", "cgroup"), "1:cpu:/\n")
	for _, pid := range []int{10, 20} {
		c := watchOOM(pid)
		require.NotNil(t, c, "pid %d", pid)
		assert.Equal(t, uint64(1), c.base)
		assert.False(t, c.killed())
	}
	assert.Nil(t, watchOOM(30), "no memory cgroup")
	assert.Nil(t, watchOOM(40), "no such process")
	var none *oomCounter
	assert.False(t, none.killed())
}
