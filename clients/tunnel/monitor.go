package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// Backoff between reconnections: doubling from backoffMin to backoffMax, with jitter, and back
// to backoffMin once the endpoint answers.
const (
	backoffMin = time.Second
	backoffMax = 30 * time.Second
	// rereadEvery is how many probes pass between reads of the connection file while the
	// endpoint answers (a failed probe reads it at once).
	rereadEvery = 10
)

func backoff(attempt int) time.Duration {
	d := backoffMin << min(attempt, 5)
	d = min(d, backoffMax)
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// watch is one run of monitor: the connection as last read, the probes made, and the
// reconnections tried since the endpoint last answered.
type watch struct {
	t       *Tunnel
	readyz  string
	conn    jobfiles.Connection
	attempt int
	probes  int
	// retry is set while the forward is down: the next reconnection.
	retry <-chan time.Time
}

// monitor keeps the forward up and the status line true until ctx ends or the job ends.
func (t *Tunnel) monitor(ctx context.Context, conn jobfiles.Connection, readyz string) error {
	if err := t.setTarget(ctx, target(conn)); err != nil {
		return t.closedOr(ctx, err)
	}
	w := &watch{t: t, readyz: readyz, conn: conn}
	tick := time.NewTicker(t.o.Interval)
	defer tick.Stop()
	err := w.check(ctx)
	for err == nil {
		done, fwd := t.forwardDone()
		select {
		case <-ctx.Done():
			t.end("tunnel closed")
			return nil
		case <-done:
			reason := fwd.exitReason()
			t.stopForward()
			w.down(reason)
		case <-w.retry:
			err = w.reconnect(ctx)
		case <-tick.C:
			if w.retry == nil { // while down, the retry timer brings it back
				err = w.check(ctx)
			}
		}
	}
	return t.closedOr(ctx, ignoreEnded(err))
}

// closedOr is err, unless the user ended the tunnel meanwhile (Ctrl-C while ssh was starting):
// that is a clean end, whatever the step it cut short said.
func (t *Tunnel) closedOr(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil {
		t.end("tunnel closed")
		return nil
	}
	return err
}

// down shows the forward down for reason and sets the next reconnection.
func (w *watch) down(reason string) {
	d := backoff(w.attempt)
	w.attempt++
	w.t.show("reconnecting", w.conn, fmt.Sprintf("%s; next try in %s", reason, d.Round(100*time.Millisecond)))
	w.retry = time.After(d)
}

// reconnect reads the connection file again and forwards to its target, or ends the watch when
// the job has ended.
func (w *watch) reconnect(ctx context.Context) error {
	w.retry = nil
	c, err := w.t.readConnection(ctx)
	if err != nil {
		w.down(err.Error())
		return nil
	}
	w.conn = c
	if c.State.Ended() || w.t.asleep() != "" {
		return w.check(ctx)
	}
	return w.t.setTarget(ctx, target(c))
}

// check probes the endpoint, reads the connection file when it must, and follows what it says:
// the status line, a move to a new target, or the end (errJobEnded, or ErrJobFailed).
func (w *watch) check(ctx context.Context) error {
	t := w.t
	// While the service sleeps the tunnel only reads its file: its own probe through the local
	// port would wake it, and only a client's request may.
	ok := t.asleep() == "" && t.probe(ctx, w.readyz)
	w.probes++
	// A service's file is read at every probe: its successor may take over at any time, and
	// the tunnel must follow before the predecessor stops taking requests.
	if ok && w.probes%rereadEvery != 0 && t.o.Service == "" {
		w.attempt = 0
		t.show("ready", w.conn, "")
		return nil
	}
	c, err := t.readConnection(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		t.show("unknown", w.conn, "cannot read the connection file: "+err.Error())
		return nil
	}
	w.conn = c
	switch {
	case t.asleep() != "":
		if !t.wakeUnderWay() {
			t.show("asleep", c, t.asleep()+"; the next request wakes it")
		}
	case c.State.Ended():
		t.end(fmt.Sprintf("%s has ended (%s); the tunnel is closed", t.name(c), describe(c)))
		if c.State == jobfiles.StateFailed {
			return fmt.Errorf("%w: %s", ErrJobFailed, describe(c))
		}
		return errJobEnded
	case target(c) != t.currentTarget():
		t.show("moving", c, "to "+target(c))
		return t.setTarget(ctx, target(c))
	case ok:
		w.attempt = 0
		t.show("ready", c, "")
	case c.State == jobfiles.StateReady:
		t.show("unreachable", c, "the job says ready but "+w.readyz+" does not answer")
	default:
		t.show(string(c.State), c, c.Reason)
	}
	return nil
}

var errJobEnded = errors.New("job ended")

func ignoreEnded(err error) error {
	if errors.Is(err, errJobEnded) {
		return nil
	}
	return err
}

// probe asks /readyz through the local port, the way a client's request goes.
func (t *Tunnel) probe(ctx context.Context, url string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<10))
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
