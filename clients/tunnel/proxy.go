package tunnel

// The local side: the listener's connections passed to the head, and the forward they use.

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// serve passes each local connection to the head's API port. When the listener closes, it
// closes the connections still open (a client's idle keep-alive one would otherwise hold the
// tunnel open) and waits for them.
func (t *Tunnel) serve(ctx context.Context, ln net.Listener) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	open := map[net.Conn]struct{}{}
	track := func(c net.Conn, add bool) {
		mu.Lock()
		defer mu.Unlock()
		if add {
			open[c] = struct{}{}
		} else {
			delete(open, c)
		}
	}
	defer func() {
		mu.Lock()
		for c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		track(c, true)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer track(c, false)
			defer c.Close()
			if err := t.awake(ctx); err != nil {
				refuse(c, err) // the client learns why, and when to try again
				return
			}
			up, err := t.dial()
			if err != nil {
				return // the client sees the connection closed, and retries
			}
			track(up, true)
			defer track(up, false)
			defer up.Close()
			splice(c, up)
		}()
	}
}

func (t *Tunnel) dial() (net.Conn, error) {
	t.mu.Lock()
	fwd, tgt := t.fwd, t.target
	t.mu.Unlock()
	if t.ssh == nil {
		return net.DialTimeout("tcp", tgt, 10*time.Second)
	}
	if fwd == nil {
		return nil, errors.New("the forward is down")
	}
	return fwd.dial()
}

// splice copies both ways until either side ends.
func splice(a, b net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		} else {
			dst.Close()
		}
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	<-done
}

// setTarget points new connections at tgt, starting the forward in ssh mode. A forward that is
// up is pointed at tgt through its master connection: the connections open through it go on.
func (t *Tunnel) setTarget(ctx context.Context, tgt string) error {
	t.mu.Lock()
	f := t.fwd
	t.mu.Unlock()
	if f != nil && t.ssh != nil {
		if err := t.ssh.retarget(ctx, f, tgt); err == nil {
			t.mu.Lock()
			t.target = tgt
			t.mu.Unlock()
			return nil
		}
	}
	t.stopForward()
	t.mu.Lock()
	t.target = tgt
	t.mu.Unlock()
	if t.ssh == nil {
		return nil
	}
	f, err := t.ssh.startForward(ctx, t.dir, tgt)
	if err != nil {
		return err
	}
	t.mu.Lock()
	t.fwd = f
	t.mu.Unlock()
	return nil
}

func (t *Tunnel) stopForward() {
	t.mu.Lock()
	f := t.fwd
	t.fwd = nil
	t.mu.Unlock()
	if f != nil {
		f.stop()
	}
}

// forwardDone is the exit channel of the running forward; nil (never ready) when there is none.
func (t *Tunnel) forwardDone() (<-chan struct{}, *forward) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.fwd == nil {
		return nil, nil
	}
	return t.fwd.done, t.fwd
}
