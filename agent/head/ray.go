package head

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/raycluster"
	"github.com/llm-agent/llm-agent/agent/secrets"
	"github.com/llm-agent/llm-agent/healthcheck"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/ray"
	"github.com/llm-agent/llm-agent/supervisor"
)

// Timings of the head's Ray that are not the user's settings.
const (
	gcsPollInterval     = 200 * time.Millisecond // the head's GCS accepting connections
	clusterPollInterval = time.Second            // every node alive in Ray, before the engine starts
	rayQueryTimeout     = 10 * time.Second       // one query of the GCS
)

// rayHealthEnv makes the GCS notice a dead raylet within seconds instead of the default tens of
// seconds: five checks a second apart, each given 3 s (Ray's default 10 s made a node cut off
// by a partition, which answers nothing, take about 55 s to be noticed; now about 20 s). Values
// already in the environment win.
var rayHealthEnv = []string{"RAY_health_check_period_ms=1000", "RAY_health_check_timeout_ms=3000", "RAY_health_check_failure_threshold=5"}

// startRay starts the supervised Ray head in rctx, waits (within ctx) until its GCS accepts
// connections, and then publishes the rendezvous so that workers join a head that is there. It
// returns the channel that reports the service's end. On an error nothing of it is left
// running: cancel ends rctx.
func (h *head) startRay(ctx, rctx context.Context, cancel func()) (<-chan error, error) {
	e := h.env
	python, err := ray.PythonFor(e.RayBin)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", config.ErrBadInput, err)
	}
	gcs := net.JoinHostPort(e.Addr, strconv.Itoa(h.ports.RayGCS))
	if err := secrets.WriteRayToken(e.StateDir); err != nil {
		return nil, err
	}
	h.rayc = ray.Client{Python: python, GCSAddress: gcs, Timeout: rayQueryTimeout, TokenFile: e.RayTokenPath()}
	h.ray = raycluster.New(raycluster.Options{GCS: h.rayc, Hosts: h.expected, SetNodes: e.State.SetRayNodes, Clock: e.Clock,
		Log: e.Log, Poll: clusterPollInterval, LogsDir: filepath.Join(e.StateDir, "logs")})
	svc, closeOut, err := e.RayService(h.ports, "", withDefaults(rayHealthEnv, e.Getenv), func(ev supervisor.Event) {
		e.TrackChild(ev)
		_ = h.conn.Update(func(c *jobfiles.Connection) { c.Restarts["ray"] = ev.Restarts })
	})
	if err != nil {
		return nil, err
	}
	errc := make(chan error, 1)
	go func() {
		defer closeOut()
		errc <- svc.Run(rctx)
	}()
	fail := func(err error) (<-chan error, error) {
		cancel()
		<-errc
		return nil, err
	}
	wctx, stopWait := context.WithTimeout(ctx, e.Cfg.RayTimeout)
	defer stopWait()
	err = healthcheck.WaitReady(wctx, e.Clock, gcsPollInterval, func(ctx context.Context) error {
		select {
		case err := <-errc:
			errc <- err
			return fmt.Errorf("ray head ended: %w", err)
		default:
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", gcs)
		if err == nil {
			c.Close()
		}
		return err
	})
	if err != nil {
		return fail(fmt.Errorf("ray head GCS at %s did not come up: %w", gcs, err))
	}
	rv := h.rendezvous()
	if err := jobfiles.WriteRendezvous(e.StateDir, rv); err != nil {
		return fail(err)
	}
	e.Log.Info("ray head up; rendezvous published", "gcs", gcs)
	return errc, nil
}

// withDefaults returns the entries of env whose variable getenv does not already set.
func withDefaults(env []string, getenv func(string) string) []string {
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if getenv(k) == "" {
			out = append(out, kv)
		}
	}
	return out
}

// engineOnRay tells whether the engine spans nodes, and so runs on Ray's executor. A model
// whose pipeline stays on the head uses vLLM's own processes there, even in a job of several
// nodes.
func (h *head) engineOnRay() bool {
	return h.env.UsesRay() && h.env.Par.Pipeline > 1
}

// monitorRay polls the GCS and restarts the engine, when it runs on Ray, once a node it was
// started on is gone.
func (h *head) monitorRay(ctx context.Context) {
	h.ray.Monitor(ctx, h.env.Cfg.RayPollInterval, func(gone []string) {
		if h.draining.Load() || !h.engineOnRay() {
			return
		}
		reason := fmt.Sprintf("ray lost node(s) %s; the engine restarts once every node is back", strings.Join(gone, ", "))
		h.env.Log.Warn("ray cluster lost a node", "nodes", gone)
		h.engine.Restart("ray_node_lost", reason)
	})
}
