// Package lora is `llm-agent lora add|remove`: the job's owner loads and unloads LoRA adapters
// on a running job's engine, through the gateway's owner-only routes.
package lora

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/llm-agent/llm-agent/agent/securefs"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/vllm"
)

// ErrInput is wrapped by the errors of input the user must fix (exit 2).
var ErrInput = errors.New("lora")

// Options say what to do.
type Options struct {
	// Job is a job id, a state directory or a connection file, as `llm-agent status` takes it.
	Job, Home string
	// Name is the adapter's name; Path its directory, for Add.
	Name, Path string
	Out        io.Writer
	// Timeout bounds the engine's answer: loading reads the adapter's weights.
	Timeout time.Duration
}

// Add loads an adapter on the job's engine; requests then name it as their model.
func Add(ctx context.Context, o Options) error {
	c, key, err := job(o)
	if err != nil {
		return err
	}
	if err := vllm.CheckAdapterName(o.Name); err != nil {
		return fmt.Errorf("%w: %w", ErrInput, err)
	}
	if o.Name == c.ServedModelName || slices.ContainsFunc(c.Adapters, func(a jobfiles.Adapter) bool { return a.Name == o.Name }) {
		return fmt.Errorf("%w: job %s already serves %q; remove it first, or choose another name", ErrInput, c.JobID, o.Name)
	}
	_, path, err := vllm.ParseAdapterSpec(o.Name + "=" + o.Path)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInput, err)
	}
	ad, err := vllm.ReadAdapter(o.Name, path)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInput, err)
	}
	if ad.Rank > c.LoRAMaxRank {
		return fmt.Errorf("%w: adapter %s has rank %d, above the job's --max-lora-rank %d: start the job with --vllm-arg=--max-lora-rank %d, or with this adapter in --lora",
			ErrInput, o.Name, ad.Rank, c.LoRAMaxRank, vllm.RankFor(ad.Rank))
	}
	if err := call(ctx, o, c, key, "/v1/load_lora_adapter", map[string]string{"lora_name": o.Name, "lora_path": path}); err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "job %s serves adapter %s (rank %d, from %s): requests name it as their model\n", c.JobID, o.Name, ad.Rank, path)
	return nil
}

// Remove unloads an adapter from the job's engine.
func Remove(ctx context.Context, o Options) error {
	c, key, err := job(o)
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(c.Adapters, func(a jobfiles.Adapter) bool { return a.Name == o.Name }) {
		names := make([]string, 0, len(c.Adapters))
		for _, a := range c.Adapters {
			names = append(names, a.Name)
		}
		served := "none"
		if len(names) > 0 {
			served = strings.Join(names, ", ")
		}
		return fmt.Errorf("%w: job %s serves no adapter %q (it serves: %s)", ErrInput, c.JobID, o.Name, served)
	}
	if err := call(ctx, o, c, key, "/v1/unload_lora_adapter", map[string]string{"lora_name": o.Name}); err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "job %s no longer serves adapter %s\n", c.JobID, o.Name)
	return nil
}

// maxKey bounds the owner key file.
const maxKey = 4 << 10

// job reads the job's connection file and the owner's key, which only the owner can read.
func job(o Options) (jobfiles.Connection, string, error) {
	path, err := jobfiles.FindConnection(o.Job, o.Home)
	if err != nil {
		return jobfiles.Connection{}, "", fmt.Errorf("%w: %w", ErrInput, err)
	}
	c, err := jobfiles.ReadConnection(path)
	if err != nil {
		return c, "", fmt.Errorf("%w: %w", ErrInput, err)
	}
	switch {
	case c.State.Ended():
		return c, "", fmt.Errorf("job %s has ended (%s)", c.JobID, c.State)
	case c.LoRAMaxRank == 0:
		return c, "", fmt.Errorf("%w: job %s serves no LoRA adapters: start it with --lora NAME=PATH (or --vllm-arg=--enable-lora)", ErrInput, c.JobID)
	case c.OwnerKeyFile == "":
		return c, "", fmt.Errorf("%w: job %s runs without the gateway (--gateway=false), which guards the adapter routes; it loads adapters only at start (--lora)", ErrInput, c.JobID)
	}
	b, err := securefs.ReadSecret(c.OwnerKeyFile, maxKey)
	if err != nil {
		return c, "", fmt.Errorf("%w: the job owner's key: %w", ErrInput, err)
	}
	return c, strings.TrimSpace(string(b)), nil
}

// call posts body to the gateway's route with the owner's key and returns the engine's refusal
// as an error.
func call(ctx context.Context, o Options, c jobfiles.Connection, key, route string, body map[string]string) error {
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	b, _ := json.Marshal(body)
	url := strings.TrimSuffix(c.BaseURL, "/v1") + route
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("job %s: %w", c.JobID, err)
	}
	defer resp.Body.Close()
	text, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	return fmt.Errorf("job %s: the engine refused (HTTP %d): %s", c.JobID, resp.StatusCode, message(text))
}

// message is the error's text in an OpenAI-style or FastAPI answer, else the body itself.
func message(b []byte) string {
	var doc struct {
		Error *struct {
			Message string `json:"message"`
		} `json:"error"`
		Detail any    `json:"detail"`
		Msg    string `json:"message"`
	}
	if json.Unmarshal(b, &doc) == nil {
		switch {
		case doc.Error != nil && doc.Error.Message != "":
			return doc.Error.Message
		case doc.Msg != "":
			return doc.Msg
		case doc.Detail != nil:
			return fmt.Sprint(doc.Detail)
		}
	}
	return strings.TrimSpace(string(b))
}
