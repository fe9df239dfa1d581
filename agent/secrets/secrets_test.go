package secrets

import (
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

// TestRunSecrets: each run's secret is new, 0600, read back through the checked reader; one
// that others can read, or that holds too little, is refused.
func TestRunSecrets(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, WriteRayToken(dir))
	tok, err := ReadRayToken(dir)
	require.NoError(t, err)
	assert.Regexp(t, `^[0-9a-f]{64}$`, tok)
	fi, err := os.Stat(filepath.Join(dir, RayTokenFile))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	require.NoError(t, WriteRayToken(dir))
	tok2, _ := ReadRayToken(dir)
	assert.NotEqual(t, tok, tok2, "a new token each run")

	key, err := WriteReplicaKey(dir)
	require.NoError(t, err)
	assert.Regexp(t, `^sk-llm-replica-[0-9a-f]{64}$`, key)
	got, err := ReadReplicaKey(dir)
	require.NoError(t, err)
	assert.Equal(t, key, got)

	require.NoError(t, os.Chmod(filepath.Join(dir, ReplicaKeyFile), 0o644))
	_, err = ReadReplicaKey(dir)
	assert.ErrorContains(t, err, "replica key")
	require.NoError(t, os.WriteFile(filepath.Join(dir, RayTokenFile), []byte("short\n"), 0o600))
	_, err = ReadRayToken(dir)
	assert.ErrorContains(t, err, "holds no ray token")
	_, err = ReadRayToken(filepath.Join(dir, "missing"))
	assert.Error(t, err)
	_, err = WriteReplicaKey(filepath.Join(dir, "missing"))
	assert.ErrorContains(t, err, "replica key")
}
