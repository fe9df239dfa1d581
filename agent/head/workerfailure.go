package head

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// How the head learns why a worker's agent ended, when Slurm ends the step for it: the worker's
// node file (its failure, or its stop), else its crash report (jobfiles.CrashReport), else its
// silence.

// workerProbeTimeout bounds a worker's agent answering, on a stop signal.
const workerProbeTimeout = time.Second

// workerFailure finds the worker whose end made Slurm end the step: one that published why its
// agent failed, or one whose agent no longer answers on its metrics port (killed, so it could
// say nothing). It returns nil when every worker's agent is still there or said it was asked to
// stop, as after scancel or at the time limit.
func (h *head) workerFailure() error {
	return workerFailure(h.env.StateDir, h.env.Alloc.Nodes[1:], probeAgent)
}

// reach is how a node's agent answered a connection to its metrics port.
type reach int

const (
	answered reach = iota
	// refused: the node is there and nothing listens: its agent is gone (killed).
	refused
	// unreachable: no answer at all within the probe's time: a partition, or a lost node.
	unreachable
)

// workerFailure is the head's workerFailure over the node files in dir, with probe telling how
// a node's agent answers on its metrics port.
func workerFailure(dir string, workers []string, probe func(jobfiles.NodeInfo) reach) error {
	infos := jobfiles.ReadNodeInfos(dir, workers)
	if err := endedWorker(infos); err != nil {
		return err
	}
	how := silentWorkers(infos, probe)
	if len(how) == 0 {
		return nil
	}
	silent := slices.Sorted(maps.Keys(how))
	// A worker that drains on the same signal says so in its file before its port closes: it
	// may have done both since the files were read. Read again, after the ports.
	infos = jobfiles.ReadNodeInfos(dir, silent)
	if err := endedWorker(infos); err != nil {
		return err
	}
	silent = silent[:0]
	for _, n := range infos {
		if n.Stopping {
			continue
		}
		if report := jobfiles.CrashReport(dir, n.Host); report != "" {
			return fmt.Errorf("%s's agent crashed: %s (the whole report: %s); Slurm ended the job step",
				n.Host, report, jobfiles.CrashFile(dir, n.Host))
		}
		silent = append(silent, n.Host)
	}
	if len(silent) == 0 {
		return nil
	}
	slices.Sort(silent)
	if lost := slices.DeleteFunc(slices.Clone(silent), func(h string) bool { return how[h] != unreachable }); len(lost) > 0 {
		return fmt.Errorf("%s unreachable: no answer from its agent's metrics port within %s (a network partition or a lost node); Slurm ended the job step",
			strings.Join(lost, ", "), workerProbeTimeout)
	}
	return fmt.Errorf("%s's agent ended without a word (killed? its metrics port no longer answers); Slurm ended the job step",
		strings.Join(silent, ", "))
}

// endedWorker is the end of the first worker in infos that published why its agent failed.
func endedWorker(infos []jobfiles.NodeInfo) error {
	for _, n := range infos {
		if n.Ended != "" {
			return fmt.Errorf("%s's agent ended: %s; Slurm ended the job step", n.Host, n.Ended)
		}
	}
	return nil
}

// silentWorkers are the hosts of infos that were not asked to stop and whose agent does not
// answer, probed at once, with how each did not.
func silentWorkers(infos []jobfiles.NodeInfo, probe func(jobfiles.NodeInfo) reach) map[string]reach {
	var mu sync.Mutex
	silent := map[string]reach{}
	var wg sync.WaitGroup
	for _, n := range infos {
		if n.Stopping {
			continue // asked to stop, as the head was: not a failure
		}
		wg.Go(func() {
			if r := probe(n); r != answered {
				mu.Lock()
				silent[n.Host] = r
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return silent
}

// probeAgent tells how n's agent answers a connection to its metrics port: refused means the
// node answered for it (its agent is gone); anything else, no answer in time.
func probeAgent(n jobfiles.NodeInfo) reach {
	c, err := net.DialTimeout("tcp", net.JoinHostPort(n.Address, strconv.Itoa(n.MetricsPort)), workerProbeTimeout)
	switch {
	case err == nil:
		c.Close()
		return answered
	case errors.Is(err, syscall.ECONNREFUSED):
		return refused
	}
	return unreachable
}
