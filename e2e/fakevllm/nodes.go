package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

// vLLM's multi-node mode without Ray, as the test double plays it: rank 0 holds the master
// port and serves the API once every other rank has reached it; the others run headless,
// reach rank 0 and serve nothing. As in vLLM, rank 0 fails when a rank it serves with goes
// away, and a headless rank whose rank 0 is gone lingers until it is stopped.

// rankWait bounds how long rank 0 waits for the others, and a headless rank for rank 0.
const rankWait = 5 * time.Minute

// fingerprint is the responses' system_fingerprint in vLLM's form, which names the parallel
// sizes above 1: "fakevllm-pp2".
func (o *options) fingerprint() string {
	f := "fakevllm"
	if o.tp > 1 {
		f += "-tp" + strconv.Itoa(o.tp)
	}
	if o.pp > 1 {
		f += "-pp" + strconv.Itoa(o.pp)
	}
	return f
}

// checkNodes refuses a layout vLLM's argument checks refuse.
func (o *options) checkNodes() error {
	world := o.tp * o.pp
	switch {
	case o.nnodes < 1:
		return fmt.Errorf("vllm serve: error: argument --nnodes: must be at least 1, got %d", o.nnodes)
	case o.nnodes > 1 && o.backend == "ray":
		return fmt.Errorf("ValueError: `--nnodes %d` is vLLM's own multi-node mode; it does not run on the Ray executor", o.nnodes)
	case world%o.nnodes != 0:
		return fmt.Errorf("ValueError: `--nnodes %d` must evenly divide the total world size (%d)", o.nnodes, world)
	case o.nodeRank < 0 || o.nodeRank >= o.nnodes:
		return fmt.Errorf("ValueError: `--node-rank` must be between 0 and %d; got `--node-rank %d`", o.nnodes-1, o.nodeRank)
	case o.headless && o.nodeRank == 0 && o.nnodes > 1:
		return errors.New("ValueError: node rank 0 serves the API: it cannot run --headless")
	case !o.headless && o.nodeRank > 0:
		return errors.New("ValueError: only node rank 0 serves the API; run the other ranks with --headless")
	}
	return nil
}

// gatherRanks, on rank 0 of several nodes, holds the master port until every other rank has
// reached it; the returned channel then reports a rank that went away.
func (o *options) gatherRanks(ctx context.Context) (<-chan error, error) {
	if o.nnodes <= 1 {
		return nil, nil
	}
	ln, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(o.masterPort)))
	if err != nil {
		return nil, fmt.Errorf("torch.distributed.DistNetworkError: the server socket has failed to listen on port %d: %w", o.masterPort, err)
	}
	go func() { <-ctx.Done(); ln.Close() }()
	lost := make(chan error, o.nnodes)
	deadline := time.Now().Add(rankWait)
	for joined := 1; joined < o.nnodes; joined++ {
		_ = ln.(*net.TCPListener).SetDeadline(deadline)
		c, err := ln.Accept()
		if err != nil {
			return nil, fmt.Errorf("RuntimeError: %d of %d node ranks joined within %s: %w", joined, o.nnodes, rankWait, err)
		}
		rank, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			c.Close()
			joined--
			continue
		}
		fmt.Fprintf(os.Stderr, "fakevllm (test double): node rank %s joined from %s\n", rank[:len(rank)-1], c.RemoteAddr())
		go func() {
			_, _ = c.Read(make([]byte, 1)) // a rank never writes again: this returns when it is gone
			lost <- fmt.Errorf("RuntimeError: node rank %s is gone (connection closed); the engine core died", rank[:len(rank)-1])
		}()
	}
	return lost, nil
}

// runHeadless reaches rank 0, says its rank, and serves nothing until it is stopped. It keeps
// running when rank 0 goes away, as a headless vLLM does.
func runHeadless(o *options) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	master := net.JoinHostPort(o.masterAddr, strconv.Itoa(o.masterPort))
	fmt.Fprintf(os.Stderr, "fakevllm (test double, not vLLM): headless node rank %d of %d, master %s, tp=%d pp=%d\n",
		o.nodeRank, o.nnodes, master, o.tp, o.pp)
	if err := checkEnvironment(o); err != nil {
		return err
	}
	deadline := time.Now().Add(rankWait)
	var c net.Conn
	for {
		var err error
		var d net.Dialer
		if c, err = d.DialContext(ctx, "tcp", master); err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("torch.distributed.DistNetworkError: cannot reach the master at %s within %s: %w", master, rankWait, err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond): // the master's port opens when rank 0 starts
		}
	}
	defer c.Close()
	fmt.Fprintf(c, "%d\n", o.nodeRank)
	fmt.Fprintln(os.Stderr, "INFO:     headless worker running")
	<-ctx.Done()
	fmt.Fprintln(os.Stderr, "INFO:     Shutting down")
	return nil
}
