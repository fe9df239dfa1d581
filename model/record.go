package model

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"

	"github.com/llm-agent/llm-agent/agent/securefs"
	"github.com/llm-agent/llm-agent/jobfiles"
)

// RecordPath is where the verified record of the model in dir is kept: in the user's own
// ~/.llm-agent/verified, never in the model's directory, which others may be able to write.
func RecordPath(home, dir string) string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		abs = dir
	}
	sum := sha256.Sum256([]byte(abs))
	return filepath.Join(home, ".llm-agent", "verified", hex.EncodeToString(sum[:12])+".json")
}

// record is what was verified: each file's digest and what it looked like then.
type record struct {
	mu    sync.Mutex
	Files map[string]recorded `json:"files"`
}

type recorded struct {
	Algo   string `json:"algo"`
	Digest string `json:"digest"`
	fileStat
}

// loadRecord reads a record; a missing or unreadable one is empty, so that the files are read.
func loadRecord(path string) *record {
	r := &record{Files: map[string]recorded{}}
	if path == "" {
		return r
	}
	b, err := securefs.ReadSecret(path, 64<<20)
	if err == nil {
		_ = json.Unmarshal(b, r)
	}
	if r.Files == nil {
		r.Files = map[string]recorded{}
	}
	return r
}

// vouches tells whether f verified with its expected digest when it looked as it does now.
func (r *record) vouches(f File, st fileStat) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.Files[f.Path]
	return ok && e.Algo == f.Algo && e.Digest == f.Want && e.fileStat == st
}

func (r *record) add(f File, st fileStat) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Files[f.Path] = recorded{Algo: f.Algo, Digest: f.Want, fileStat: st}
}

// save writes the record, 0600 in a directory of the user's own.
func (r *record) save(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	if err := securefs.EnsureDir(filepath.Dir(path)); err != nil {
		return err
	}
	r.mu.Lock()
	b, err := json.Marshal(r)
	r.mu.Unlock()
	if err != nil {
		return err
	}
	return jobfiles.WriteFileAtomic(path, b, 0o600)
}
