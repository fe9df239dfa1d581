package supervisor

// Whether the kernel's out-of-memory killer ended a child: a child killed by SIGKILL while the
// oom_kill count of its memory cgroup rose. Slurm's task/cgroup puts every process of a job step
// in one cgroup with the job's memory limit; the count is that cgroup's (cgroup v2:
// memory.events; v1: memory.oom_control, which does not count the cgroups below it, so the
// cgroup is the child's own, read when it starts).

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Where the kernel's files are; tests point them at files of their own.
var (
	procRoot   = "/proc"
	cgroupRoot = "/sys/fs/cgroup"
)

// oomCounter is the oom_kill count of one memory cgroup.
type oomCounter struct {
	file string // memory.events (v2) or memory.oom_control (v1)
	base uint64 // the count when the child started
}

// watchOOM finds pid's memory cgroup and its oom_kill count now; nil when there is none to read.
func watchOOM(pid int) *oomCounter {
	f, err := os.Open(filepath.Join(procRoot, strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return nil
	}
	defer f.Close()
	var candidates []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		// hierarchy-ID:controllers:path
		parts := strings.SplitN(s.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case strings.Contains(","+parts[1]+",", ",memory,"): // v1
			candidates = append([]string{filepath.Join(cgroupRoot, "memory", parts[2], "memory.oom_control")}, candidates...)
		case parts[0] == "0" && parts[1] == "": // v2, or the unified part of a hybrid host
			candidates = append(candidates, filepath.Join(cgroupRoot, parts[2], "memory.events"),
				filepath.Join(cgroupRoot, "unified", parts[2], "memory.events"))
		}
	}
	for _, file := range candidates {
		if n, ok := oomKills(file); ok {
			return &oomCounter{file: file, base: n}
		}
	}
	return nil
}

// killed tells whether the cgroup's oom_kill count rose since the child started.
func (c *oomCounter) killed() bool {
	if c == nil {
		return false
	}
	n, ok := oomKills(c.file)
	return ok && n > c.base
}

// oomKills reads the "oom_kill N" line of a memory cgroup's events or oom_control file.
func oomKills(file string) (uint64, bool) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}
