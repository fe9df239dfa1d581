// Package gateway is the head agent's front door: an authenticated OpenAI-compatible reverse
// proxy in front of the engine, with per-key metrics, in-flight limits and an audit log of who
// called. It knows nothing of Slurm, Ray, or how the engine is started.
package gateway

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.yaml.in/yaml/v3"

	"github.com/llm-agent/llm-agent/agent/securefs"
	"github.com/llm-agent/llm-agent/clock"
)

// ErrKeys is wrapped by errors about the keys file.
var ErrKeys = errors.New("keys file")

// Key is one client key: who holds it and, optionally, its scheduling priority.
type Key struct {
	Name     string `yaml:"name" json:"name"`
	Project  string `yaml:"project" json:"project"`
	Key      string `yaml:"key,omitempty" json:"key,omitempty"`
	SHA256   string `yaml:"sha256,omitempty" json:"sha256,omitempty"`
	Priority *int   `yaml:"priority,omitempty" json:"priority,omitempty"`
	// Models are the served models and adapters the key may use; none listed: all of them.
	// Any other answers 404 as if it did not exist.
	Models []string `yaml:"models,omitempty" json:"models,omitempty"`
	// RequestsPerMinute, TokensPerMinute (prompt and completion) and MaxInFlight limit the key;
	// 0 is no limit. Past one, the client gets 429 with Retry-After.
	RequestsPerMinute int `yaml:"requests_per_minute,omitempty" json:"requests_per_minute,omitempty"`
	TokensPerMinute   int `yaml:"tokens_per_minute,omitempty" json:"tokens_per_minute,omitempty"`
	MaxInFlight       int `yaml:"max_in_flight,omitempty" json:"max_in_flight,omitempty"`

	hash [sha256.Size]byte
}

// KeySet is an immutable set of keys; reloads swap in a new one.
type KeySet struct {
	keys []Key
}

// NewKeySet checks keys and hashes the plain ones.
func NewKeySet(keys []Key) (*KeySet, error) {
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: no keys", ErrKeys)
	}
	names := map[string]bool{}
	hashes := map[[sha256.Size]byte]bool{}
	out := make([]Key, 0, len(keys))
	for i, k := range keys {
		if k.Name == "" {
			return nil, fmt.Errorf("%w: key %d has no name", ErrKeys, i+1)
		}
		if k.Name == OwnerKeyName {
			return nil, fmt.Errorf("%w: the key name %q is kept for the job's owner", ErrKeys, k.Name)
		}
		if names[k.Name] {
			return nil, fmt.Errorf("%w: two keys are named %q", ErrKeys, k.Name)
		}
		names[k.Name] = true
		switch {
		case k.Key != "" && k.SHA256 != "":
			return nil, fmt.Errorf("%w: key %q has both key and sha256; keep one", ErrKeys, k.Name)
		case k.Key != "":
			if len(k.Key) < 16 {
				return nil, fmt.Errorf("%w: key %q is shorter than 16 characters", ErrKeys, k.Name)
			}
			k.hash = sha256.Sum256([]byte(k.Key))
		case k.SHA256 != "":
			b, err := hex.DecodeString(strings.TrimPrefix(strings.ToLower(k.SHA256), "sha256:"))
			if err != nil || len(b) != sha256.Size {
				return nil, fmt.Errorf("%w: key %q: sha256 is not 64 hex digits", ErrKeys, k.Name)
			}
			copy(k.hash[:], b)
		default:
			return nil, fmt.Errorf("%w: key %q has neither key nor sha256", ErrKeys, k.Name)
		}
		if k.RequestsPerMinute < 0 || k.TokensPerMinute < 0 || k.MaxInFlight < 0 {
			return nil, fmt.Errorf("%w: key %q: limits cannot be negative", ErrKeys, k.Name)
		}
		for _, m := range k.Models {
			if strings.TrimSpace(m) == "" {
				return nil, fmt.Errorf("%w: key %q lists an empty model name", ErrKeys, k.Name)
			}
		}
		if hashes[k.hash] {
			return nil, fmt.Errorf("%w: key %q repeats another key", ErrKeys, k.Name)
		}
		hashes[k.hash] = true
		k.Key = "" // only the hash is kept in memory
		out = append(out, k)
	}
	return &KeySet{keys: out}, nil
}

// Lookup finds the key a client presented. It compares the presented key's hash with every
// key's in constant time and never stops early, so timing says nothing about the keys.
func (s *KeySet) Lookup(presented string) (Key, bool) {
	h := sha256.Sum256([]byte(presented))
	found := -1
	for i := range s.keys {
		if subtle.ConstantTimeCompare(h[:], s.keys[i].hash[:]) == 1 {
			found = i
		}
	}
	if found < 0 || presented == "" {
		return Key{}, false
	}
	return s.keys[found], true
}

// Len is the number of keys.
func (s *KeySet) Len() int { return len(s.keys) }

// HashKey returns the sha256 form a keys file may store instead of the key.
func HashKey(key string) string {
	h := sha256.Sum256([]byte(key))
	return hex.EncodeToString(h[:])
}

// maxKeysFile bounds the keys file.
const maxKeysFile = 4 << 20

// LoadKeys reads a YAML or JSON keys file ({keys: [{name, project, key | sha256, priority}]}).
// The file must not be readable by group or others.
func LoadKeys(path string) (*KeySet, error) {
	b, err := securefs.ReadSecret(path, maxKeysFile)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeys, err)
	}
	var doc struct {
		Keys []Key `yaml:"keys"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(b)) // YAML is a superset of JSON
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrKeys, path, err)
	}
	set, err := NewKeySet(doc.Keys)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	return set, nil
}

// Keys holds the current key set and reloads it from its file.
type Keys struct {
	path string
	log  hclog.Logger
	cur  atomic.Pointer[KeySet]
	// stamp identifies the file version last loaded (or tried).
	stamp string
}

// NewKeys loads path, or serves the given set when path is empty.
func NewKeys(path string, fixed *KeySet, log hclog.Logger) (*Keys, error) {
	k := &Keys{path: path, log: log}
	if path == "" {
		k.cur.Store(fixed)
		return k, nil
	}
	set, err := LoadKeys(path)
	if err != nil {
		return nil, err
	}
	k.cur.Store(set)
	k.stamp = fileStamp(path)
	return k, nil
}

// Current returns the key set in force.
func (k *Keys) Current() *KeySet { return k.cur.Load() }

// Reload reads the file again; a bad file keeps the old keys and returns why.
func (k *Keys) Reload() error {
	if k.path == "" {
		return nil
	}
	k.stamp = fileStamp(k.path)
	set, err := LoadKeys(k.path)
	if err != nil {
		k.log.Error("keys file reload failed; keeping the old keys", "error", err)
		return err
	}
	k.cur.Store(set)
	k.log.Info("keys reloaded", "keys", set.Len())
	return nil
}

// Watch reloads on SIGHUP and when the file changes (checked every interval; a shared
// filesystem gives no reliable change notification), until ctx ends.
func (k *Keys) Watch(ctx context.Context, clk clock.Clock, interval time.Duration) {
	if k.path == "" {
		return
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			k.Reload()
		case <-clk.After(interval):
			if fileStamp(k.path) != k.stamp {
				k.Reload()
			}
		}
	}
}

func fileStamp(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return "missing"
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	ino := uint64(0)
	if st != nil {
		ino = st.Ino
	}
	return fmt.Sprintf("%d/%d/%d/%o", fi.ModTime().UnixNano(), fi.Size(), ino, fi.Mode().Perm())
}

// Restricted says whether the key may use only the models it lists.
func (k Key) Restricted() bool { return len(k.Models) > 0 }

// Allows says whether the key may use model.
func (k Key) Allows(model string) bool {
	if !k.Restricted() {
		return true
	}
	for _, m := range k.Models {
		if m == model {
			return true
		}
	}
	return false
}

// GenerateKey makes a random API key.
func GenerateKey() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate API key: %w", err)
	}
	return "sk-llm-" + hex.EncodeToString(b), nil
}
