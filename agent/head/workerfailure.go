package head

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
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
	return workerFailure(h.env.StateDir, h.env.Alloc.Nodes[1:], metricsPortAnswers)
}

// workerFailure is the head's workerFailure over the node files in dir, with answers telling
// whether a node's agent answers on its metrics port.
func workerFailure(dir string, workers []string, answers func(jobfiles.NodeInfo) bool) error {
	infos := jobfiles.ReadNodeInfos(dir, workers)
	if err := endedWorker(infos); err != nil {
		return err
	}
	silent := silentWorkers(infos, answers)
	if len(silent) == 0 {
		return nil
	}
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
// answer, probed at once.
func silentWorkers(infos []jobfiles.NodeInfo, answers func(jobfiles.NodeInfo) bool) []string {
	var mu sync.Mutex
	var silent []string
	var wg sync.WaitGroup
	for _, n := range infos {
		if n.Stopping {
			continue // asked to stop, as the head was: not a failure
		}
		wg.Go(func() {
			if !answers(n) {
				mu.Lock()
				silent = append(silent, n.Host)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return silent
}

// metricsPortAnswers tells whether n's agent accepts a connection on its metrics port.
func metricsPortAnswers(n jobfiles.NodeInfo) bool {
	c, err := net.DialTimeout("tcp", net.JoinHostPort(n.Address, strconv.Itoa(n.MetricsPort)), workerProbeTimeout)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
