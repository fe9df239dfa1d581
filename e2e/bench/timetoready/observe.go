package main

// How a run is observed from outside: the job running, every Ray node alive, the endpoint ready.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/llm-agent/llm-agent/agent"
	"github.com/llm-agent/llm-agent/clock"
	"github.com/llm-agent/llm-agent/healthcheck"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/ray"
	"github.com/llm-agent/llm-agent/vllm"
)

// waitRunning returns when squeue first shows the job running.
func waitRunning(ctx context.Context, id string) (time.Time, error) {
	for {
		out, _ := exec.Command("squeue", "-h", "-j", id, "-o", "%T").Output()
		if strings.TrimSpace(string(out)) == "RUNNING" {
			return time.Now(), nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, errors.New("job never ran")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// observeRay runs a Python observer that polls the GCS every 50 ms and reports when all nodes
// are alive.
func observeRay(ctx context.Context, cfg config, mode, stateDir string) time.Time {
	gcs := fmt.Sprintf("10.77.0.1:%d", 6379)
	if mode == "llm-agent" {
		for {
			rv, err := jobfiles.ReadRendezvous(stateDir)
			if err == nil {
				gcs = rv.RayAddress()
				break
			}
			select {
			case <-ctx.Done():
				return time.Time{}
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	cmd := exec.CommandContext(ctx, filepath.Join(cfg.venv, "bin", "python"), "-c", observer, gcs, strconv.Itoa(cfg.nodes))
	if mode == "llm-agent" {
		// The job's Ray cluster wants its token, as every client of it does.
		cmd.Env = ray.WithAuth(os.Environ(), filepath.Join(stateDir, agent.RayTokenFile))
	}
	out, err := cmd.StdoutPipe()
	if err != nil || cmd.Start() != nil {
		return time.Time{}
	}
	defer cmd.Wait()
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "ALL" {
			sec, _ := strconv.ParseFloat(f[1], 64)
			return time.Unix(0, int64(sec*1e9))
		}
	}
	return time.Time{}
}

// observeReady polls every 50 ms until the endpoint serves, the way a client finds out: for
// the agent, the connection file says ready and a request through the gateway with the job's
// key lists the model; for the baseline, which has no such file, vLLM's /health answers and
// /v1/models lists the model.
func observeReady(ctx context.Context, mode, stateDir string) (time.Time, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var failed error // a job that failed: no use waiting
	var ready func(ctx context.Context) error
	if mode == "llm-agent" {
		path := filepath.Join(stateDir, jobfiles.ConnectionFile)
		ready = func(ctx context.Context) error {
			c, err := jobfiles.ReadConnection(path)
			switch {
			case err != nil:
				return err
			case c.State == jobfiles.StateFailed:
				failed = fmt.Errorf("the job failed: %s", c.Reason)
				cancel()
				return failed
			case c.State != jobfiles.StateReady:
				return fmt.Errorf("state %s", c.State)
			}
			key, err := os.ReadFile(c.APIKeyFile)
			if err != nil {
				return err
			}
			return listsModel(ctx, c.BaseURL+"/models", strings.TrimSpace(string(key)))
		}
	} else {
		eng := vllm.Probe{BaseURL: fmt.Sprintf("http://10.77.0.1:%d", baselinePort), APIKey: baselineKey}
		ready = func(ctx context.Context) error { return eng.Ready(ctx, "tiny") }
	}
	err := healthcheck.WaitReady(ctx, clock.Real{}, 50*time.Millisecond, func(ctx context.Context) error {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		return ready(pctx)
	})
	if failed != nil {
		return time.Time{}, failed
	}
	return time.Now(), err
}

// listsModel asks url (/v1/models) with key and wants the served model "tiny" in the answer.
func listsModel(ctx context.Context, url, key string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"tiny"`) {
		return fmt.Errorf("%s: %d %.100s", url, resp.StatusCode, b)
	}
	return nil
}
