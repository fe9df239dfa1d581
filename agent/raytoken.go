package agent

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/llm-agent/llm-agent/agent/securefs"
	"github.com/llm-agent/llm-agent/jobfiles"
)

// RayTokenFile is the name of the job's Ray token in the state directory.
const RayTokenFile = "ray_token"

// WriteRayToken makes a new random token for the job's Ray cluster and writes it, mode 0600,
// to the state directory, where every node's Ray and the engine read it. Each run of the head
// makes a new one, so a token from an earlier run opens nothing.
func WriteRayToken(stateDir string) error {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return fmt.Errorf("generate ray token: %w", err)
	}
	if err := jobfiles.WriteFileAtomic(filepath.Join(stateDir, RayTokenFile), []byte(hex.EncodeToString(b)+"\n"), 0o600); err != nil {
		return fmt.Errorf("ray token: %w", err)
	}
	_, err := ReadRayToken(stateDir)
	return err
}

// ReadRayToken reads the job's Ray token through the checked secret reader: the file must be
// the user's and closed to others.
func ReadRayToken(stateDir string) (string, error) {
	b, err := securefs.ReadSecret(filepath.Join(stateDir, RayTokenFile), maxKeyFile)
	if err != nil {
		return "", fmt.Errorf("ray token: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if len(token) < 32 {
		return "", fmt.Errorf("ray token: %s holds no token", filepath.Join(stateDir, RayTokenFile))
	}
	return token, nil
}
