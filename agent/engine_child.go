package agent

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/llm-agent/llm-agent/agent/internal/linelog"
	"github.com/llm-agent/llm-agent/ray"
	"github.com/llm-agent/llm-agent/supervisor"
	"github.com/llm-agent/llm-agent/vllm"
)

// engineChild is one `vllm serve` this node supervises: the head's engine (or its rank 0), a
// replica's, or a worker's rank. engineOptions builds each of them the same way.
type engineChild struct {
	// name is the child's in logs, metrics and its log file ("vllm", "vllm-1").
	name string
	spec vllm.ServeSpec
	// env is added to the node's environment; gpus, when set, are the child's
	// CUDA_VISIBLE_DEVICES.
	env  []string
	gpus []string
	// rayAuth turns Ray's token authentication on for the child, over its whole environment
	// (the engine on Ray is a Ray driver).
	rayAuth bool
	// beforeStart, if set, runs before each start, once a stale socket is gone.
	beforeStart func() error
	// onEvent, if set, follows each event, after the output and the metrics have.
	onEvent func(supervisor.Event)
}

// engineOptions returns the supervised child of c, with the configuration's restart policy, and
// its output, which closeOut flushes and closes. The caller may set its gate (Before) and its
// stop test (Stopping), or change the policy, before supervisor.NewService.
func (a *agent) engineOptions(c engineChild) (opts supervisor.ServiceOptions, out *linelog.Logger, closeOut func(), err error) {
	if out, closeOut, err = a.childOutput(c.name); err != nil {
		return supervisor.ServiceOptions{}, nil, nil, err
	}
	env := append(a.environ(), c.env...)
	if c.gpus != nil {
		env = append(env, "CUDA_VISIBLE_DEVICES="+strings.Join(c.gpus, ","))
	}
	if a.lora.on() {
		env = append(env, vllm.RuntimeLoRAEnv)
	}
	if c.rayAuth {
		env = ray.WithAuth(env, a.rayTokenPath())
	}
	opts = a.serviceOptions(c.name)
	opts.Command = func() (supervisor.Options, error) {
		if err := removeStaleSocket(c.spec.Socket); err != nil {
			return supervisor.Options{}, err
		}
		if c.beforeStart != nil {
			if err := c.beforeStart(); err != nil {
				return supervisor.Options{}, err
			}
		}
		return supervisor.Options{Name: c.name, Path: a.vllmBin, Args: vllm.ServeArgs(a.lora.spec(c.spec)), Env: env,
			Stdout: out, Stderr: out, Grace: a.cfg.Grace / 4, Reaper: a.deps.Reaper}, nil
	}
	opts.OnEvent = func(e supervisor.Event) {
		if e.State == supervisor.StateStarting {
			out.NewRun()
		}
		a.trackChild(e)
		if c.onEvent != nil {
			c.onEvent(e)
		}
	}
	return opts, out, closeOut, nil
}

// removeStaleSocket removes the socket an earlier engine left at path, and refuses anything
// else there.
func removeStaleSocket(path string) error {
	if path == "" {
		return nil
	}
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("engine socket %s: not a socket left by an earlier engine (%v)", path, err)
	}
	return os.Remove(path)
}
