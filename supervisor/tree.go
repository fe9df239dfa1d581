package supervisor

import (
	"context"
	"slices"

	"github.com/shirou/gopsutil/v4/process"
)

// The process table, read through gopsutil: the reaper uses it to find what a command left
// behind, the metrics to add up what a child and everything below it uses.

// The boot time does not change while the agent runs: without the cache, every reading of a
// process's stat file reads /proc/stat again, half of a scrape's cost.
func init() { process.EnableBootTimeCache(true) }

// procTable maps each process to its children.
type procTable map[int32][]int32

// readProcTable reads the table; withZombies false leaves zombies out (they are dead already
// and are reaped by their parent or, once orphaned, by the reaper), at the cost of a second
// file read per process.
func readProcTable(ctx context.Context, withZombies bool) procTable {
	pids, err := process.PidsWithContext(ctx)
	if err != nil {
		return nil
	}
	t := procTable{}
	for _, pid := range pids {
		p := &process.Process{Pid: pid}
		ppid, err := p.PpidWithContext(ctx)
		if err != nil {
			continue // gone since the listing
		}
		if !withZombies {
			if st, err := p.StatusWithContext(ctx); err != nil || slices.Contains(st, process.Zombie) {
				continue
			}
		}
		t[ppid] = append(t[ppid], pid)
	}
	return t
}

// below lists every process under root, breadth first, root itself left out.
func (t procTable) below(root int32) []int32 {
	var out []int32
	queue := []int32{root}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		out = append(out, t[p]...)
		queue = append(queue, t[p]...)
	}
	return out
}

// descendants lists every live process below pid.
func descendants(root int) []int {
	var out []int
	for _, p := range readProcTable(context.Background(), false).below(int32(root)) {
		out = append(out, int(p))
	}
	return out
}

// ProcessUsage is what one supervised child uses: the command the reaper started and every
// process below it, the reaper itself left out.
type ProcessUsage struct {
	// Processes counts the live processes of the tree.
	Processes int
	// RSS is the sum of their resident memory in bytes. Pages that forked processes share are
	// counted once per process, as ps and top do.
	RSS uint64
	// Threads and FDs are the sums of their threads and open file descriptors.
	Threads, FDs int
	// CPU is each live process's CPU seconds (user and system), keyed by pid and start time
	// so that a reused pid is a different process.
	CPU map[ProcessKey]float64
}

// ProcessKey names one process over time: a pid may be reused, a pid with its start time not.
type ProcessKey struct {
	PID     int32
	Created int64
}

// Usage reads what the process tree below each of roots (the reapers' pids) uses, with one
// reading of the process table. A root with no live process below it reads as zero. A zombie
// counts as a process until it is reaped, with no memory and the CPU it used.
func Usage(ctx context.Context, roots []int) map[int]ProcessUsage {
	out := make(map[int]ProcessUsage, len(roots))
	if len(roots) == 0 {
		return out
	}
	t := readProcTable(ctx, true)
	for _, root := range roots {
		u := ProcessUsage{CPU: map[ProcessKey]float64{}}
		for _, pid := range t.below(int32(root)) {
			addProcess(ctx, &u, pid)
		}
		out[root] = u
	}
	return out
}

// addProcess adds one process to u; one that ends while it is read is left out.
func addProcess(ctx context.Context, u *ProcessUsage, pid int32) {
	p := &process.Process{Pid: pid}
	created, err := p.CreateTimeWithContext(ctx)
	if err != nil {
		return
	}
	mem, err := p.MemoryInfoWithContext(ctx)
	if err != nil {
		return
	}
	times, err := p.TimesWithContext(ctx)
	if err != nil {
		return
	}
	threads, err := p.NumThreadsWithContext(ctx)
	if err != nil {
		return
	}
	u.Processes++
	u.RSS += mem.RSS
	u.Threads += int(threads)
	u.CPU[ProcessKey{PID: pid, Created: created}] = times.User + times.System
	// Another user's process (a setuid helper) hides its descriptors; it still counts.
	if fds, err := p.NumFDsWithContext(ctx); err == nil {
		u.FDs += int(fds)
	}
}
