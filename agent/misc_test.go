package agent

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/agent/config"
)

func TestLoadAPIKey(t *testing.T) {
	k1, err := LoadAPIKey("")
	require.NoError(t, err)
	k2, _ := LoadAPIKey("")
	assert.NotEqual(t, k1, k2)
	assert.Regexp(t, `^sk-llm-[0-9a-f]{48}$`, k1)

	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	require.NoError(t, os.WriteFile(good, []byte("sk-mine\n"), 0o600))
	k, err := LoadAPIKey(good)
	require.NoError(t, err)
	assert.Equal(t, "sk-mine", k)

	open := filepath.Join(dir, "open")
	require.NoError(t, os.WriteFile(open, []byte("sk-mine\n"), 0o644))
	_, err = LoadAPIKey(open)
	assert.ErrorIs(t, err, config.ErrInvalid)
	assert.ErrorContains(t, err, "chmod 600")
	assert.NotContains(t, err.Error(), "sk-mine", "the key never appears in an error")

	two := filepath.Join(dir, "two")
	require.NoError(t, os.WriteFile(two, []byte("a\nb\n"), 0o600))
	_, err = LoadAPIKey(two)
	assert.ErrorContains(t, err, "exactly one key")
	_, err = LoadAPIKey(filepath.Join(dir, "missing"))
	assert.ErrorIs(t, err, config.ErrInvalid)
}

func TestRemoveStaleSocket(t *testing.T) {
	dir := t.TempDir()
	assert.NoError(t, removeStaleSocket(""), "no socket in use")
	sock := filepath.Join(dir, "engine.sock")
	assert.NoError(t, removeStaleSocket(sock), "none left")
	ln, err := net.Listen("unix", sock)
	require.NoError(t, err)
	ln.(*net.UnixListener).SetUnlinkOnClose(false) // as a SIGKILLed engine leaves it
	ln.Close()
	require.FileExists(t, sock)
	assert.NoError(t, removeStaleSocket(sock))
	assert.NoFileExists(t, sock)
	require.NoError(t, os.WriteFile(sock, nil, 0o600))
	assert.ErrorContains(t, removeStaleSocket(sock), "not a socket")
}
