package jobfiles

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ErrNoJob is returned when the connection file of a job cannot be found.
var ErrNoJob = errors.New("no such job")

// JobsDir is where a user's jobs keep their state, under the home directory.
const JobsDir = ".llm-agent/jobs"

// FindConnection finds a job's connection file from a job id (under home's JobsDir), a state
// directory or the file itself.
func FindConnection(arg, home string) (string, error) {
	if arg == "" {
		return "", fmt.Errorf("%w: give a job id or the path of its connection.json", ErrNoJob)
	}
	candidates := []string{arg, filepath.Join(arg, ConnectionFile)}
	if !strings.ContainsRune(arg, '/') && home != "" {
		candidates = append(candidates, filepath.Join(home, JobsDir, arg, ConnectionFile))
	}
	for _, c := range candidates {
		if fi, err := os.Stat(c); err == nil && !fi.IsDir() {
			return c, nil
		}
	}
	return "", fmt.Errorf("%w: no connection file for %q (looked in %s)", ErrNoJob, arg, strings.Join(candidates[1:], ", "))
}
