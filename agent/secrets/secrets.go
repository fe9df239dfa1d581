// Package secrets holds the secrets of a job's run: the clients' API key (read from the user's
// file or made for the job), the job's Ray token and the replicas' internal key, each new for
// every run, written 0600 into the state directory and read back through the checked reader.
package secrets

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/gateway"
	"github.com/llm-agent/llm-agent/agent/securefs"
	"github.com/llm-agent/llm-agent/jobfiles"
)

// ErrKeyFile is wrapped by errors about the API key file.
var ErrKeyFile = fmt.Errorf("%w: API key file", config.ErrInvalid)

// maxKeyFile bounds a key file: one key on one line.
const maxKeyFile = 4 << 10

// RayTokenFile is the name of the job's Ray token in the state directory.
const RayTokenFile = "ray_token"

// ReplicaKeyFile is the job's internal key between the head's gateway and the workers' replica
// gateways, in the state directory (0600, new each run). No client key opens a replica.
const ReplicaKeyFile = "replica_key"

// LoadAPIKey reads the key from path, which must not be readable by group or others; with no
// path it generates a random key for the job.
func LoadAPIKey(path string) (string, error) {
	if path == "" {
		return gateway.GenerateKey()
	}
	b, err := securefs.ReadSecret(path, maxKeyFile)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrKeyFile, err)
	}
	key := strings.TrimSpace(string(b))
	if key == "" || strings.ContainsAny(key, " \t\r\n") {
		return "", fmt.Errorf("%w: %s must hold exactly one key on one line", ErrKeyFile, path)
	}
	return key, nil
}

// WriteRayToken makes a new random token for the job's Ray cluster and writes it, mode 0600,
// to the state directory, where every node's Ray and the engine read it. Each run of the head
// makes a new one, so a token from an earlier run opens nothing.
func WriteRayToken(stateDir string) error {
	_, err := writeRunSecret(stateDir, RayTokenFile, "ray token", "")
	return err
}

// ReadRayToken reads the job's Ray token through the checked secret reader: the file must be
// the user's and closed to others.
func ReadRayToken(stateDir string) (string, error) {
	return readRunSecret(stateDir, RayTokenFile, "ray token")
}

// WriteReplicaKey makes the run's replica key.
func WriteReplicaKey(stateDir string) (string, error) {
	return writeRunSecret(stateDir, ReplicaKeyFile, "replica key", "sk-llm-replica-")
}

// ReadReplicaKey reads the run's replica key through the checked secret reader.
func ReadReplicaKey(stateDir string) (string, error) {
	return readRunSecret(stateDir, ReplicaKeyFile, "replica key")
}

// writeRunSecret makes a new random secret of this run (prefix and 64 hex digits), writes it
// to name in the state directory with mode 0600, and reads it back through the checked reader.
func writeRunSecret(stateDir, name, what, prefix string) (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate %s: %w", what, err)
	}
	if err := jobfiles.WriteFileAtomic(filepath.Join(stateDir, name), []byte(prefix+hex.EncodeToString(b)+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	return readRunSecret(stateDir, name, what)
}

// readRunSecret reads a secret of this run from the state directory: the file must be the
// user's and closed to others, and hold one.
func readRunSecret(stateDir, name, what string) (string, error) {
	path := filepath.Join(stateDir, name)
	b, err := securefs.ReadSecret(path, maxKeyFile)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	secret := strings.TrimSpace(string(b))
	if len(secret) < 32 {
		return "", fmt.Errorf("%s: %s holds no %s", what, path, what)
	}
	return secret, nil
}
