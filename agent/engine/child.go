// Package engine is the one way a node runs `vllm serve`: the supervised child (the head's
// engine or its rank 0, a replica's, or a worker's rank, each built by Options), the follow
// that waits for a new engine to answer ready and then watches its liveness, the quick watch
// that takes an engine that stops answering out of a rotation, and the pass-through of its
// own metrics.
package engine

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/llm-agent/llm-agent/agent/internal/linelog"
	"github.com/llm-agent/llm-agent/agent/node"
	"github.com/llm-agent/llm-agent/ray"
	"github.com/llm-agent/llm-agent/supervisor"
	"github.com/llm-agent/llm-agent/vllm"
)

// Child is one `vllm serve` a node supervises.
type Child struct {
	// Name is the child's in logs, metrics and its log file ("vllm", "vllm-1").
	Name string
	Spec vllm.ServeSpec
	// Env is added to the node's environment; GPUs, when set, are the child's
	// CUDA_VISIBLE_DEVICES.
	Env  []string
	GPUs []string
	// RayAuth turns Ray's token authentication on for the child, over its whole environment
	// (the engine on Ray is a Ray driver).
	RayAuth bool
	// BeforeStart, if set, runs before each start, once a stale socket is gone.
	BeforeStart func() error
	// OnEvent, if set, follows each event, after the output and the metrics have.
	OnEvent func(supervisor.Event)
}

// Options returns the supervised child c of the node, with the configuration's restart policy,
// and its output, which closeOut flushes and closes. The caller may set its gate (Before) and
// its stop test (Stopping), or change the policy, before supervisor.NewService.
func Options(e *node.Env, c Child) (opts supervisor.ServiceOptions, out *linelog.Logger, closeOut func(), err error) {
	if out, closeOut, err = e.ChildOutput(c.Name); err != nil {
		return supervisor.ServiceOptions{}, nil, nil, err
	}
	env := append(e.Environ(), c.Env...)
	if c.GPUs != nil {
		env = append(env, "CUDA_VISIBLE_DEVICES="+strings.Join(c.GPUs, ","))
	}
	if e.LoRA.On() {
		env = append(env, vllm.RuntimeLoRAEnv)
	}
	if c.RayAuth {
		env = ray.WithAuth(env, e.RayTokenPath())
	}
	opts = e.ServiceOptions(c.Name)
	opts.Command = func() (supervisor.Options, error) {
		if err := RemoveStaleSocket(c.Spec.Socket); err != nil {
			return supervisor.Options{}, err
		}
		if c.BeforeStart != nil {
			if err := c.BeforeStart(); err != nil {
				return supervisor.Options{}, err
			}
		}
		return supervisor.Options{Name: c.Name, Path: e.VLLMBin, Args: vllm.ServeArgs(e.LoRA.Spec(c.Spec)), Env: env,
			Stdout: out, Stderr: out, Grace: e.Cfg.Grace / 4, Reaper: e.Reaper}, nil
	}
	opts.OnEvent = func(ev supervisor.Event) {
		if ev.State == supervisor.StateStarting {
			out.NewRun()
		}
		e.TrackChild(ev)
		if c.OnEvent != nil {
			c.OnEvent(ev)
		}
	}
	return opts, out, closeOut, nil
}

// RemoveStaleSocket removes the socket an earlier engine left at path, and refuses anything
// else there.
func RemoveStaleSocket(path string) error {
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
