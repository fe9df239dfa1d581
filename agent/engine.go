package agent

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"github.com/llm-agent/llm-agent/agent/securefs"
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

// managedFlags are vllm serve flags the agent sets itself; passing them through is an error.
var managedFlags = map[string]string{
	"--host":                         "the agent binds the engine itself",
	"--port":                         "use llm-agent's --port",
	"--served-model-name":            "use llm-agent's --served-model-name",
	"--tensor-parallel-size":         "use llm-agent's --tensor-parallel-size",
	"-tp":                            "use llm-agent's --tensor-parallel-size",
	"--pipeline-parallel-size":       "use llm-agent's --pipeline-parallel-size",
	"-pp":                            "use llm-agent's --pipeline-parallel-size",
	"--distributed-executor-backend": "the agent chooses ray for more than one node",
	"--api-key":                      "a key on the command line is visible to every user of the node in ps; use --api-key-file",
}

// CheckExtraArgs rejects pass-through arguments that the agent manages or that would leak a
// secret.
func CheckExtraArgs(extra []string) error {
	for _, a := range extra {
		flag, _, _ := strings.Cut(a, "=")
		if why, ok := managedFlags[flag]; ok {
			return fmt.Errorf("%w: --vllm-arg %s is not allowed: %s", ErrConfig, flag, why)
		}
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
