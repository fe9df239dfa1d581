package head

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/llm-agent/llm-agent/agent/raycluster"
	"github.com/llm-agent/llm-agent/jobfiles"
)

// waitCluster blocks until exactly one live Ray node runs on every host of the job: within
// --ray-timeout at the start, and within --node-lost-timeout once Ray has lost a node the
// engine ran on (monitorRay restarts the engine, and this is its gate). Past the second the
// job fails, naming the nodes that did not come back and how their agents answer.
func (h *head) waitCluster(ctx context.Context) error {
	if !h.ray.Lost() {
		return h.ray.WaitComplete(ctx, h.env.Cfg.RayTimeout)
	}
	within := h.env.Cfg.NodeLostTimeout
	err := h.ray.WaitComplete(ctx, within)
	var inc *raycluster.IncompleteError
	if errors.As(err, &inc) {
		return nodesLost(h.env.StateDir, inc.Missing, within, probeAgent)
	}
	return err
}

// nodesLost is the error for the hosts in missing that did not join Ray again within the
// bound after Ray lost them: unreachable when their agents do not answer at all, gone when
// their nodes refuse, else still there but out of Ray.
func nodesLost(dir string, missing []string, within time.Duration, probe func(jobfiles.NodeInfo) reach) error {
	how := map[string]reach{}
	for _, host := range missing {
		how[host] = unreachable // no node file to probe: nothing is known of it
	}
	for _, n := range jobfiles.ReadNodeInfos(dir, missing) {
		how[n.Host] = probe(n)
	}
	pick := func(r reach) []string {
		var hosts []string
		for h, got := range how {
			if got == r {
				hosts = append(hosts, h)
			}
		}
		slices.Sort(hosts)
		return hosts
	}
	if lost := pick(unreachable); len(lost) > 0 {
		return fmt.Errorf("%w: %s unreachable: Ray lost it while serving and it did not join again within %s (--node-lost-timeout), and its agent's metrics port gives no answer within %s (a network partition or a lost node)",
			raycluster.ErrIncomplete, strings.Join(lost, ", "), within, workerProbeTimeout)
	}
	if gone := pick(refused); len(gone) > 0 {
		return fmt.Errorf("%w: %s's agent is gone (its metrics port refuses): Ray lost the node while serving and it did not join again within %s (--node-lost-timeout)",
			raycluster.ErrIncomplete, strings.Join(gone, ", "), within)
	}
	return fmt.Errorf("%w: %s did not join Ray again within %s (--node-lost-timeout) after Ray lost it; its agent answers: see its Ray log in %s",
		raycluster.ErrIncomplete, strings.Join(pick(answered), ", "), within, filepath.Join(dir, "logs"))
}
