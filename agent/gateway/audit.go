package gateway

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/llm-agent/llm-agent/agent/securefs"
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

// Bounds of the text fields of an audit line, so that a line stays under a few KiB whatever a
// client sends: the model name is the only field a client chooses.
const (
	maxModelField = 256
	maxNameField  = 128
	maxErrorField = 256
)

// auditField makes s fit for the audit log: valid UTF-8, no control characters, at most max
// bytes (cut on a character boundary and marked with "…").
func auditField(s string, max int) string {
	clean := true
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == utf8.RuneError {
			clean = false
			break
		}
	}
	if clean && len(s) <= max {
		return s
	}
	var b strings.Builder
	for _, r := range strings.ToValidUTF8(s, "\ufffd") {
		if r < 0x20 || r == 0x7f {
			r = '\ufffd'
		}
		if b.Len()+utf8.RuneLen(r) > max-len("…") {
			b.WriteString("…")
			break
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Audit appends records to a file as JSON lines and fsyncs at least every second. A record
// waits in memory until it is written; a write that fails (a full disk) cuts the file back to
// its last whole record and keeps the rest waiting, so that the file never holds a broken line
// and no record is lost while the disk is full. Past maxAuditPending waiting, the oldest
// records go, each counted.
type Audit struct {
	mu      sync.Mutex
	f       auditFile
	buf     []byte // one record, encoded
	pending []byte // records not written to the file yet, oldest first
	size    int64  // the file's size: where the next record begins
	dirty   bool   // written since the last fsync

	failures, dropped uint64
	lastErr           error
}

// auditFile is the audit log's file (an *os.File; tests give one whose disk fills).
type auditFile interface {
	Write(b []byte) (int, error)
	Truncate(size int64) error
	Sync() error
	Close() error
}

// Bounds of what waits in memory: a write to the file once auditFlushAt waits, and records
// dropped (counted) past maxAuditPending.
const (
	auditFlushAt    = 64 << 10
	maxAuditPending = 64 << 20
)

// AuditStats are the audit log's troubles: failed writes and fsyncs, records dropped, and the
// bytes waiting to be written.
type AuditStats struct {
	Failures, Dropped uint64
	Pending           int
	LastErr           error
}

// AuditFile is the audit log's name in the state directory.
const AuditFile = "audit.jsonl"

// OpenAudit opens path for appending, creating it with mode 0600; it never follows a link.
func OpenAudit(path string) (*Audit, error) {
	f, err := securefs.OpenAppend(path)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	return &Audit{f: f, size: fi.Size()}, nil
}

// Write appends one record; it reaches the disk within a second, or as soon as the disk takes
// it again. The error is the file's, when a write to it failed now: the record still waits.
func (a *Audit) Write(r Record) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	r.Key, r.Project = auditField(r.Key, maxNameField), auditField(r.Project, maxNameField)
	r.Model, r.Error = auditField(r.Model, maxModelField), auditField(r.Error, maxErrorField)
	a.buf = r.appendJSON(a.buf[:0])
	for len(a.pending)+len(a.buf) > maxAuditPending && a.dropOldest() {
	}
	a.pending = append(a.pending, a.buf...)
	if len(a.pending) >= auditFlushAt {
		return a.flushLocked()
	}
	return nil
}

// dropOldest drops the oldest records, a quarter of the bound at a time (one copy for many
// records), and counts them.
func (a *Audit) dropOldest() bool {
	cut := min(len(a.pending), maxAuditPending/4)
	if i := bytes.IndexByte(a.pending[cut:], '\n'); i >= 0 {
		cut += i + 1
	} else {
		cut = len(a.pending)
	}
	if cut == 0 {
		return false
	}
	a.dropped += uint64(bytes.Count(a.pending[:cut], []byte{'\n'}))
	a.pending = append(a.pending[:0], a.pending[cut:]...)
	return true
}

// flushLocked writes what waits to the file. A write the disk took only part of is cut back to
// its last whole record; the rest waits.
func (a *Audit) flushLocked() error {
	if len(a.pending) == 0 {
		return nil
	}
	n, err := a.f.Write(a.pending)
	if err != nil && n > 0 {
		whole := bytes.LastIndexByte(a.pending[:n], '\n') + 1
		if terr := a.f.Truncate(a.size + int64(whole)); terr == nil {
			n = whole
		}
	}
	if n > 0 {
		a.dirty = true
		a.size += int64(n)
		a.pending = append(a.pending[:0], a.pending[n:]...)
	}
	if err != nil {
		a.failures++
		a.lastErr = err
		return fmt.Errorf("audit log: %w (%d bytes wait for the disk)", err, len(a.pending))
	}
	return nil
}

// Stats reports the audit log's troubles.
func (a *Audit) Stats() AuditStats {
	a.mu.Lock()
	defer a.mu.Unlock()
	return AuditStats{Failures: a.failures, Dropped: a.dropped, Pending: len(a.pending), LastErr: a.lastErr}
}

// appendJSON encodes the record as one JSON line, the same as encoding/json would, without
// reflection: the gateway writes one per request.
func (r Record) appendJSON(b []byte) []byte {
	b = append(b, `{"time":"`...)
	b = r.Time.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","key":`...)
	b = appendString(b, r.Key)
	b = append(b, `,"project":`...)
	b = appendString(b, r.Project)
	b = append(b, `,"endpoint":`...)
	b = appendString(b, r.Endpoint)
	if r.Model != "" {
		b = append(b, `,"model":`...)
		b = appendString(b, r.Model)
	}
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(r.Status), 10)
	if r.Stream {
		b = append(b, `,"stream":true`...)
	}
	b = append(b, `,"prompt_tokens":`...)
	b = strconv.AppendInt(b, int64(r.PromptTokens), 10)
	b = append(b, `,"completion_tokens":`...)
	b = strconv.AppendInt(b, int64(r.CompletionTokens), 10)
	b = append(b, `,"latency_seconds":`...)
	b = strconv.AppendFloat(b, r.LatencySeconds, 'g', -1, 64)
	if r.TTFTSeconds != 0 {
		b = append(b, `,"ttft_seconds":`...)
		b = strconv.AppendFloat(b, r.TTFTSeconds, 'g', -1, 64)
	}
	if r.Error != "" {
		b = append(b, `,"error":`...)
		b = appendString(b, r.Error)
	}
	return append(b, "}\n"...)
}

// appendString appends s as a JSON string.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	s = strings.ToValidUTF8(s, "\ufffd")
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// Sync writes what waits and fsyncs what was written.
func (a *Audit) Sync() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	err := a.flushLocked()
	if a.dirty {
		if serr := a.f.Sync(); serr != nil {
			a.failures++
			a.lastErr = serr
			return fmt.Errorf("audit log: %w", serr)
		}
		a.dirty = false
	}
	return err
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
