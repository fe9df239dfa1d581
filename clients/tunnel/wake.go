package tunnel

// A service that sleeps (--idle-release): the tunnel stays up, and a client's connection is
// held while the tunnel wakes the service (llm-agent service wake on the login host, one wake
// for every connection that arrives meanwhile), then passed to the job that serves. A tunnel
// that does not wait (--wake-timeout 0) answers 503 with Retry-After and the service's state.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// The service states in which it serves nothing until woken.
var sleepStates = map[string]bool{"asleep": true, "waking": true}

// serviceState reads the service's own state and reason from its file's bytes ("" for a job).
func serviceState(b []byte) (state, reason string) {
	var f struct {
		Service *struct {
			State  string `json:"state"`
			Reason string `json:"reason"`
		} `json:"service"`
	}
	if json.Unmarshal(b, &f) != nil || f.Service == nil {
		return "", ""
	}
	return f.Service.State, f.Service.Reason
}

// asleep is the service's state while it sleeps or wakes; "" while it serves, or for a job.
func (t *Tunnel) asleep() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.sleep
}

// lastConn is the connection file as last read.
func (t *Tunnel) lastConn() jobfiles.Connection {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.last
}

// seen records the connection file as read, and the state the service's part of it gives.
func (t *Tunnel) seen(c jobfiles.Connection, state, reason string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.last, t.sleep = c, ""
	if sleepStates[state] {
		t.sleep = state
		if reason != "" {
			t.sleep += ": " + reason
		}
	}
}

// wakeUnderWay tells whether a wake runs now (it shows its own progress).
func (t *Tunnel) wakeUnderWay() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.waking != nil
}

// awake returns once the service serves: at once unless it sleeps; else after the wake that
// this call or an earlier one started. Its error is what the client is answered.
func (t *Tunnel) awake(ctx context.Context) error {
	state := t.asleep()
	if state == "" {
		return nil
	}
	if t.o.WakeTimeout <= 0 {
		return fmt.Errorf("service %s is %s", t.o.Service, state)
	}
	t.mu.Lock()
	if t.waking == nil {
		done := make(chan struct{})
		t.waking = done
		go t.wake(ctx, done)
	}
	done := t.waking
	t.mu.Unlock()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-done:
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.wakeErr
}

// wake runs llm-agent service wake --wait where the service's files are, shows its progress on
// the status line, and points the forward at the job that serves once it does.
func (t *Tunnel) wake(ctx context.Context, done chan struct{}) {
	err := t.runWake(ctx)
	if err == nil {
		var c jobfiles.Connection
		if c, err = t.readConnection(ctx); err == nil {
			t.show("ready", c, "woken")
			err = t.setTarget(ctx, target(c))
		}
	}
	t.mu.Lock()
	t.wakeErr, t.waking = err, nil
	t.mu.Unlock()
	close(done)
}

// runWake runs the wake and passes each line it prints to the status line.
func (t *Tunnel) runWake(ctx context.Context) error {
	wait := fmt.Sprintf("%ds", int(t.o.WakeTimeout.Seconds()))
	args := []string{"service", "wake", "--wait", wait, "--by", "llm-agent tunnel", t.o.Service} // flags before the name
	var cmd *exec.Cmd
	if t.ssh != nil {
		quoted := make([]string, len(args))
		for i, a := range args {
			quoted[i] = shellQuote(a)
		}
		cmd = t.ssh.command(ctx, nil, shellQuote(t.o.Agent)+" "+strings.Join(quoted, " "))
	} else {
		cmd = exec.CommandContext(ctx, t.o.Agent, args...)
		cmd.SysProcAttr = childAttr()
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = cmd.Stdout
	cmd.Stdin = nil
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("wake the service: %w", err)
	}
	last := ""
	lines := bufio.NewScanner(out)
	for lines.Scan() {
		if line := strings.TrimSpace(lines.Text()); line != "" {
			last = line
			t.show("waking", t.lastConn(), line)
		}
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("the service did not wake: %s", last)
	}
	return nil
}

// refuse answers a client's connection that cannot be served: 503, Retry-After and why.
func refuse(c net.Conn, why error) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if req, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
		io.Copy(io.Discard, io.LimitReader(req.Body, 1<<20))
	}
	body, _ := json.Marshal(map[string]any{"error": map[string]string{"message": why.Error(), "type": "service_asleep"}})
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 30\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n", len(body))
	b.Write(body)
	c.Write(b.Bytes())
}

// defaultAgent is the llm-agent that wakes a service here: this program.
func defaultAgent() string {
	if p, err := os.Executable(); err == nil {
		return p
	}
	return "llm-agent"
}
