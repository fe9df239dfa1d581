package engine

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRemoveStaleSocket(t *testing.T) {
	dir := t.TempDir()
	assert.NoError(t, RemoveStaleSocket(""), "no socket in use")
	sock := filepath.Join(dir, "engine.sock")
	assert.NoError(t, RemoveStaleSocket(sock), "none left")
	ln, err := net.Listen("unix", sock)
	require.NoError(t, err)
	ln.(*net.UnixListener).SetUnlinkOnClose(false) // as a SIGKILLed engine leaves it
	ln.Close()
	require.FileExists(t, sock)
	assert.NoError(t, RemoveStaleSocket(sock))
	assert.NoFileExists(t, sock)
	require.NoError(t, os.WriteFile(sock, nil, 0o600))
	assert.ErrorContains(t, RemoveStaleSocket(sock), "not a socket")
}
