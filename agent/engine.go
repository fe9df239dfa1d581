package agent

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"github.com/llm-agent/llm-agent/agent/securefs"
	"github.com/llm-agent/llm-agent/vllm"
)

// EngineSpec is what the head needs to start `vllm serve`.
type EngineSpec struct {
	Model      string
	ServedName string
	Host       string
	Port       int
	// Socket, when set, is the Unix socket the engine listens on instead of Host and Port.
	Socket      string
	Parallelism Parallelism
	// MultiNode selects vLLM's Ray executor.
	MultiNode bool
	// Extra are the user's pass-through arguments.
	Extra []string
}

// CheckExtraArgs rejects pass-through arguments that would set what the agent manages or leak
// a secret, in any spelling vLLM's parser accepts.
func CheckExtraArgs(extra []string) error {
	if err := vllm.CheckExtraArgs(extra); err != nil {
		return fmt.Errorf("%w: --vllm-arg: %w", ErrConfig, err)
	}
	return nil
}

// EngineArgs returns the arguments of `vllm serve`, without the executable.
func EngineArgs(s EngineSpec) []string {
	itoa := strconv.Itoa
	args := []string{"serve", s.Model}
	if s.Socket != "" {
		args = append(args, "--uds", s.Socket)
	} else {
		args = append(args, "--host", s.Host, "--port", itoa(s.Port))
	}
	args = append(args,
		"--served-model-name", s.ServedName,
		"--tensor-parallel-size", itoa(s.Parallelism.Tensor),
		"--pipeline-parallel-size", itoa(s.Parallelism.Pipeline),
	)
	if s.MultiNode {
		args = append(args, "--distributed-executor-backend", "ray")
	}
	return append(args, s.Extra...)
}

// ErrKeyFile is wrapped by errors about the API key file.
var ErrKeyFile = fmt.Errorf("%w: API key file", ErrConfig)

// maxKeyFile bounds an API key file: one key on one line.
const maxKeyFile = 4 << 10

// LoadAPIKey reads the key from path, which must not be readable by group or others; with no
// path it generates a random key for the job.
func LoadAPIKey(path string) (string, error) {
	if path == "" {
		b := make([]byte, 24)
		if _, err := rand.Read(b); err != nil {
			return "", fmt.Errorf("generate API key: %w", err)
		}
		return "sk-llm-" + hex.EncodeToString(b), nil
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
