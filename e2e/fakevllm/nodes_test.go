package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseNodeFlags(t *testing.T) {
	o, err := parseArgs(strings.Fields("serve /m --uds /s -pp 2 --distributed-executor-backend mp --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 --master-port 31000"))
	require.NoError(t, err)
	assert.Equal(t, 2, o.nnodes)
	assert.Equal(t, "10.0.0.1", o.masterAddr)
	assert.Equal(t, 31000, o.masterPort)
	assert.Equal(t, "fakevllm-pp2", o.fingerprint())
	o, err = parseArgs(strings.Fields("serve /m --pipeline-parallel-size 2 -n 2 -r 1 --headless --master-addr 10.0.0.1"))
	require.NoError(t, err)
	assert.True(t, o.headless)
	assert.Equal(t, 1, o.nodeRank)
	for _, tt := range []struct{ args, err string }{
		{"serve /m --nnodes 2", "must evenly divide the total world size (1)"},
		{"serve /m -pp 2 --nnodes 2 --node-rank 2 --headless", "between 0 and 1"},
		{"serve /m -pp 2 --nnodes 2 --headless", "cannot run --headless"},
		{"serve /m -pp 2 --nnodes 2 --node-rank 1", "run the other ranks with --headless"},
		{"serve /m -pp 2 --nnodes 2 --distributed-executor-backend ray", "does not run on the Ray executor"},
		{"serve /m --headless=1", "unrecognized arguments: --headless=1"},
	} {
		_, err := parseArgs(strings.Fields(tt.args))
		assert.ErrorContains(t, err, tt.err, tt.args)
	}
}

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestTwoNodeRanks: rank 0 serves only once rank 1 has reached it, answers with the pipeline in
// its fingerprint, and fails when rank 1 goes away.
func TestTwoNodeRanks(t *testing.T) {
	t.Setenv("FAKEVLLM_CONTROL", "")
	sock := filepath.Join(t.TempDir(), "engine.sock")
	port := freePort(t)
	o, err := parseArgs(strings.Fields(fmt.Sprintf("serve /m --served-model-name m --uds %s -pp 2 --nnodes 2 --node-rank 0 --master-port %d", sock, port)))
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- run(o) }()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	var rank1 net.Conn
	require.Eventually(t, func() bool { rank1, err = net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port)); return err == nil }, 5*time.Second, 10*time.Millisecond)
	_, statErr := os.Stat(sock)
	assert.Error(t, statErr, "no API before every rank has joined")
	fmt.Fprintf(rank1, "1\n")
	require.Eventually(t, func() bool {
		resp, err := client.Get("http://engine/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, 5*time.Second, 10*time.Millisecond)
	resp, err := client.Post("http://engine/v1/completions", "application/json", strings.NewReader(`{"model":"m","prompt":"x","max_tokens":2}`))
	require.NoError(t, err)
	var body struct {
		Fingerprint string `json:"system_fingerprint"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
	resp.Body.Close()
	assert.Equal(t, "fakevllm-pp2", body.Fingerprint)

	rank1.Close()
	select {
	case err := <-done:
		assert.ErrorContains(t, err, "node rank 1 is gone")
	case <-time.After(10 * time.Second):
		t.Fatal("rank 0 kept running without rank 1")
	}
}

// TestHeadlessRankLingers: a headless rank reaches rank 0, says its rank, and keeps running
// when rank 0 goes away, until it is stopped.
func TestHeadlessRankLingers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	o, err := parseArgs(strings.Fields(fmt.Sprintf("serve /m -pp 2 --nnodes 2 --node-rank 1 --headless --master-addr 127.0.0.1 --master-port %d", port)))
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- runHeadless(o) }()
	c, err := ln.Accept()
	require.NoError(t, err)
	rank, err := bufio.NewReader(c).ReadString('\n')
	require.NoError(t, err)
	assert.Equal(t, "1\n", rank)
	c.Close()
	ln.Close()
	select {
	case err := <-done:
		t.Fatalf("the headless rank ended with rank 0: %v", err)
	case <-time.After(300 * time.Millisecond): // a lingering rank shows only by not ending; nothing to wait on
	}
	require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGTERM))
	select {
	case err := <-done:
		assert.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the headless rank did not stop on SIGTERM")
	}
}
