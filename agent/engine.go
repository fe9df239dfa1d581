package agent

import (
	"fmt"
	"strings"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/gateway"
	"github.com/llm-agent/llm-agent/agent/securefs"
)

// ErrKeyFile is wrapped by errors about the API key file.
var ErrKeyFile = fmt.Errorf("%w: API key file", config.ErrInvalid)

// maxKeyFile bounds an API key file: one key on one line.
const maxKeyFile = 4 << 10

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
