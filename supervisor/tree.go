package supervisor

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

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

// Trees reads what the process tree below each of some roots (the reapers' pids) uses. It keeps
// each tree's members between readings: the whole process table (every process on the node,
// kernel threads included) is read again only after Rescan, or when the roots change. A process
// that joins a tree between two table readings is counted from the next one. A root with no
// live process below it reads as zero; a zombie counts as a process until it is reaped, with no
// memory and the CPU it used.
type Trees struct {
	// Rescan is how long the members are kept; 0 reads the table every time.
	Rescan time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	mu      sync.Mutex
	members map[int][]ProcessKey
	scanned time.Time
	scans   int // table readings so far
}

// Usage reads what the tree below each of roots uses.
func (t *Trees) Usage(ctx context.Context, roots []int) map[int]ProcessUsage {
	out := make(map[int]ProcessUsage, len(roots))
	if len(roots) == 0 {
		return out
	}
	now := time.Now
	if t.Now != nil {
		now = t.Now
	}
	t.mu.Lock()
	if t.stale(roots, now()) {
		table := readProcTable(ctx, true)
		t.members = map[int][]ProcessKey{}
		for _, root := range roots {
			t.members[root] = nil // known, even with nothing below it, so that it is not rescanned
			for _, pid := range table.below(int32(root)) {
				if created, err := (&process.Process{Pid: pid}).CreateTimeWithContext(ctx); err == nil {
					t.members[root] = append(t.members[root], ProcessKey{PID: pid, Created: created})
				}
			}
		}
		t.scanned = now()
		t.scans++
	}
	members := maps.Clone(t.members)
	t.mu.Unlock()
	for _, root := range roots {
		u := ProcessUsage{CPU: map[ProcessKey]float64{}}
		for _, k := range members[root] {
			addProcess(ctx, &u, k)
		}
		out[root] = u
	}
	return out
}

func (t *Trees) stale(roots []int, now time.Time) bool {
	if t.members == nil || now.Sub(t.scanned) >= t.Rescan || len(roots) != len(t.members) {
		return true
	}
	for _, r := range roots {
		if _, ok := t.members[r]; !ok {
			return true
		}
	}
	return false
}

// addProcess adds one process to u; one that has ended, or whose pid now names another
// process, is left out.
func addProcess(ctx context.Context, u *ProcessUsage, k ProcessKey) {
	p := &process.Process{Pid: k.PID}
	if created, err := p.CreateTimeWithContext(ctx); err != nil || created != k.Created {
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
	u.CPU[k] = times.User + times.System
	// Another user's process (a setuid helper) hides its descriptors; it still counts.
	if fds, err := p.NumFDsWithContext(ctx); err == nil {
		u.FDs += int(fds)
	}
}
