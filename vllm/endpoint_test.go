package vllm

import (
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func serve(t *testing.T, ln net.Listener) {
	t.Helper()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("path " + r.URL.Path))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

func get(t *testing.T, e Endpoint, path string) string {
	t.Helper()
	c := &http.Client{Transport: e.Transport(2)}
	resp, err := c.Get(e.BaseURL() + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}

func TestEndpointSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), SocketName)
	ln, err := net.Listen("unix", sock)
	require.NoError(t, err)
	serve(t, ln)
	e := Endpoint{Socket: sock}
	assert.Equal(t, "unix:"+sock, e.String())
	assert.Equal(t, "path /health", get(t, e, "/health"))
}

func TestEndpointTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	serve(t, ln)
	e := Endpoint{Port: ln.Addr().(*net.TCPAddr).Port}
	assert.Equal(t, "http://127.0.0.1:"+strconv.Itoa(e.Port), e.String())
	assert.Equal(t, "path /v1/models", get(t, e, "/v1/models"))
}
