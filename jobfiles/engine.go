package jobfiles

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// EngineFile is where the head of an engine across nodes without Ray (--launcher mp) says which
// generation of the engine runs: the ranks live and die together, so every start of the head's
// rank is a new generation, and each worker restarts its rank when the generation moves on.
const EngineFile = "engine.json"

// EngineGeneration is the content of engine.json.
type EngineGeneration struct {
	Generation int       `json:"generation"`
	StartedAt  time.Time `json:"started_at"`
}

// WriteEngineGeneration publishes generation gen in dir.
func WriteEngineGeneration(dir string, gen int) error {
	return WriteJSONAtomic(filepath.Join(dir, EngineFile), EngineGeneration{Generation: gen, StartedAt: time.Now().UTC()}, 0o644)
}

// ReadEngineGeneration reads the generation the head published in dir; 0 when there is none yet.
func ReadEngineGeneration(dir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dir, EngineFile))
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var g EngineGeneration
	if err := json.Unmarshal(b, &g); err != nil {
		return 0, fmt.Errorf("%s: %w", EngineFile, err)
	}
	return g.Generation, nil
}
