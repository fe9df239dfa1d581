package jobfiles

import (
	"sync"
)

// NodeFile is the one writer of a node's file in its agent. The agent's goroutines report into
// it at once (a rank that ended, a replica's restarts, the drain's stop, the run's failure): it
// keeps the node's record in memory and writes it whole under its lock, so that no report is
// lost to another's write. It never reads the file back: a read, change and write from two
// goroutines would keep only the later one's change (a stop mark lost so once made the head take
// a worker's clean drain for a silent death).
type NodeFile struct {
	dir string
	mu  sync.Mutex
	n   NodeInfo
}

// NewNodeFile returns the writer of host's node file in dir; it writes nothing yet.
func NewNodeFile(dir, host string) *NodeFile {
	return &NodeFile{dir: dir, n: NodeInfo{Host: host}}
}

// Publish writes n as the node's record, keeping what was reported before it (an end, a stop,
// a rank's end, the replicas' restarts): the node's identity may be published after a report.
func (f *NodeFile) Publish(n NodeInfo) error {
	return f.Update(func(cur *NodeInfo) {
		n.Ended, n.Stopping, n.EngineEnded = cur.Ended, cur.Stopping, cur.EngineEnded
		if n.EngineRestarts == nil {
			n.EngineRestarts = cur.EngineRestarts
		}
		*cur = n
	})
}

// Update applies change to the node's record and writes it. The host stays the file's own.
func (f *NodeFile) Update(change func(*NodeInfo)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	next := f.n
	next.EngineRestarts = append([]int(nil), f.n.EngineRestarts...)
	change(&next)
	next.Host = f.n.Host
	if err := WriteNodeInfo(f.dir, next); err != nil {
		return err
	}
	f.n = next
	return nil
}

// Snapshot returns the record as last written.
func (f *NodeFile) Snapshot() NodeInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.n
	n.EngineRestarts = append([]int(nil), f.n.EngineRestarts...)
	return n
}

// End records why the node's agent failed (reason), or, with an empty reason, that it was asked
// to stop.
func (f *NodeFile) End(reason string) error {
	return f.Update(func(n *NodeInfo) {
		if reason == "" {
			n.Stopping = true
		} else {
			n.Ended = reason
		}
	})
}

// EngineEnd records that the node's rank of engine generation gen ended by itself, and why.
func (f *NodeFile) EngineEnd(gen int, reason string) error {
	return f.Update(func(n *NodeInfo) { n.EngineEnded = &EngineEnd{Generation: gen, Reason: reason} })
}

// EngineRestarts records how often the engine of the node's replica in slot restarted.
func (f *NodeFile) EngineRestarts(slot, restarts int) error {
	return f.Update(func(n *NodeInfo) {
		for len(n.EngineRestarts) <= slot {
			n.EngineRestarts = append(n.EngineRestarts, 0)
		}
		n.EngineRestarts[slot] = restarts
	})
}
