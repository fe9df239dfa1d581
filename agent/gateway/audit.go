package gateway

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"time"
)

// Record is one audit line: who called what, and what it cost. It never holds the key, the
// prompt or the completion.
type Record struct {
	Time             time.Time `json:"time"`
	Key              string    `json:"key"`
	Project          string    `json:"project"`
	Endpoint         string    `json:"endpoint"`
	Model            string    `json:"model,omitempty"`
	Status           int       `json:"status"`
	Stream           bool      `json:"stream,omitempty"`
	PromptTokens     int       `json:"prompt_tokens"`
	CompletionTokens int       `json:"completion_tokens"`
	LatencySeconds   float64   `json:"latency_seconds"`
	TTFTSeconds      float64   `json:"ttft_seconds,omitempty"`
	Error            string    `json:"error,omitempty"`
}

// Audit appends records to a file as JSON lines and fsyncs at least every second.
type Audit struct {
	mu    sync.Mutex
	f     *os.File
	w     *bufio.Writer
	dirty bool
}

// AuditFile is the audit log's name in the state directory.
const AuditFile = "audit.jsonl"

// OpenAudit opens path for appending, creating it with mode 0600.
func OpenAudit(path string) (*Audit, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	return &Audit{f: f, w: bufio.NewWriter(f)}, nil
}

// Write appends one record; it reaches the disk within a second.
func (a *Audit) Write(r Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, err := a.w.Write(append(b, '\n')); err != nil {
		return err
	}
	a.dirty = true
	return nil
}

// Sync flushes and fsyncs what was written.
func (a *Audit) Sync() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.dirty {
		return nil
	}
	if err := a.w.Flush(); err != nil {
		return err
	}
	a.dirty = false
	return a.f.Sync()
}

// Run syncs every interval until ctx ends, then syncs and closes the file.
func (a *Audit) Run(ctx context.Context, interval time.Duration) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			err := a.Sync()
			if cerr := a.f.Close(); err == nil {
				err = cerr
			}
			return err
		case <-tick.C:
			a.Sync()
		}
	}
}
