// Package vllm holds what llm-agent knows of vLLM itself: the `vllm serve` command line, the
// rule for the flags the agent manages, one reader of vLLM's arguments, where the engine's API
// is reached (socket or port), its readiness and liveness probes, and its metric names with the
// collector that re-exports them. It knows nothing of Slurm, Ray, the gateway or the agent's
// files.
package vllm

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"time"
)

// SocketName is the engine's Unix socket in the node's private directory.
const SocketName = "engine.sock"

// Endpoint is where the engine's HTTP API is: a Unix domain socket (behind the gateway, where
// only the job's user can connect) or a TCP port on loopback.
type Endpoint struct {
	// Socket is the path of the Unix socket (`vllm serve --uds`); empty for TCP.
	Socket string
	// Port is the engine's TCP port when there is no socket; Host its address, loopback when
	// empty (another node's, for a replica behind that node's gateway).
	Port int
	Host string
}

// BaseURL is the root of the engine's routes. Over a socket the host part is only a name: the
// transport dials the socket whatever the URL says.
func (e Endpoint) BaseURL() string {
	if e.Socket != "" {
		return "http://engine"
	}
	host := e.Host
	if host == "" {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, strconv.Itoa(e.Port))
}

// String names the endpoint in logs and reasons.
func (e Endpoint) String() string {
	if e.Socket != "" {
		return "unix:" + e.Socket
	}
	return e.BaseURL()
}

// Transport returns an HTTP transport that reaches the engine, with idle connections kept for
// maxIdle concurrent requests. Compression is off: the engine is on this node.
func (e Endpoint) Transport(maxIdle int) *http.Transport {
	d := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		DialContext:         d.DialContext,
		DisableCompression:  true,
		MaxIdleConnsPerHost: maxIdle,
		IdleConnTimeout:     90 * time.Second,
	}
	if e.Socket != "" {
		socket := e.Socket
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", socket)
		}
	}
	return tr
}
