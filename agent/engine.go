package agent

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/securefs"
)

// ErrKeyFile is wrapped by errors about the API key file.
var ErrKeyFile = fmt.Errorf("%w: API key file", config.ErrInvalid)

// maxKeyFile bounds an API key file: one key on one line.
const maxKeyFile = 4 << 10

// GenerateKey makes a random API key.
func GenerateKey() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate API key: %w", err)
	}
	return "sk-llm-" + hex.EncodeToString(b), nil
}

// LoadAPIKey reads the key from path, which must not be readable by group or others; with no
// path it generates a random key for the job.
func LoadAPIKey(path string) (string, error) {
	if path == "" {
		return GenerateKey()
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
