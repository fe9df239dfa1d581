package model

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// ErrManifest is wrapped by a SHA256SUMS that cannot be read.
var ErrManifest = errors.New("bad SHA256SUMS")

// Entry is one line of a SHA256SUMS: a file's name in the directory and its SHA-256.
type Entry struct {
	Digest, Name string
}

// ParseManifest reads sha256sum's format: "DIGEST  NAME" (text mode) or "DIGEST *NAME" (binary
// mode), a line starting with a backslash when the name escapes a backslash or a newline.
// Names must stay inside the directory.
func ParseManifest(b []byte) ([]Entry, error) {
	var out []Entry
	seen := map[string]bool{}
	for i, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		n := i + 1
		if strings.TrimSpace(line) == "" {
			continue
		}
		escaped := strings.HasPrefix(line, "\\")
		line = strings.TrimPrefix(line, "\\")
		if len(line) < 67 || !sha256Hex.MatchString(strings.ToLower(line[:64])) || line[64] != ' ' || (line[65] != ' ' && line[65] != '*') {
			return nil, fmt.Errorf("%w: line %d: expected DIGEST, two spaces (or a space and *) and a file name", ErrManifest, n)
		}
		name := line[66:]
		if escaped {
			name = strings.NewReplacer(`\\`, `\`, `\n`, "\n").Replace(name)
		}
		clean := filepath.Clean(name)
		if filepath.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") {
			return nil, fmt.Errorf("%w: line %d: %q is outside the directory", ErrManifest, n, name)
		}
		if seen[clean] {
			return nil, fmt.Errorf("%w: line %d: %q is listed twice", ErrManifest, n, name)
		}
		seen[clean] = true
		out = append(out, Entry{Digest: strings.ToLower(line[:64]), Name: clean})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no file listed", ErrManifest)
	}
	return out, nil
}

// FormatManifest writes entries as sha256sum does, sorted by name.
func FormatManifest(entries []Entry) []byte {
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name })
	var b bytes.Buffer
	for _, e := range entries {
		if strings.ContainsAny(e.Name, "\\\n") {
			b.WriteString("\\" + e.Digest + "  " + strings.NewReplacer(`\`, `\\`, "\n", `\n`).Replace(e.Name) + "\n")
			continue
		}
		b.WriteString(e.Digest + "  " + e.Name + "\n")
	}
	return b.Bytes()
}

// WriteManifest hashes every regular file of dir (links to files included; hidden files and
// directories, such as a download tool's .cache, and the manifest itself left out) in parallel
// and writes dir/SHA256SUMS atomically, which `sha256sum -c` accepts.
func WriteManifest(ctx context.Context, dir string, workers int) ([]Entry, error) {
	all, err := regularFiles(dir)
	if err != nil {
		return nil, err
	}
	names := slices.DeleteFunc(all, func(name string) bool { return name == ManifestName })
	if len(names) == 0 {
		return nil, fmt.Errorf("%w: %s holds no file", ErrNoSource, dir)
	}
	entries := make([]Entry, len(names))
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	err = parallel(ctx, len(names), workers, func(ctx context.Context, i int) error {
		d, err := HashFile(ctx, filepath.Join(dir, names[i]), AlgoSHA256)
		entries[i] = Entry{Digest: d, Name: names[i]}
		return err
	})
	if err != nil {
		return nil, err
	}
	return entries, jobfiles.WriteFileAtomic(filepath.Join(dir, ManifestName), FormatManifest(entries), 0o644)
}

// regularFiles lists the files of dir, by their path in it: regular files and links to them.
// Hidden files and directories, such as a download tool's .cache, are left out, and so are
// links to a directory or to nothing.
func regularFiles(dir string) ([]string, error) {
	var names []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name, _ := filepath.Rel(dir, path)
		if name != "." && strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return nil
		}
		if _, err := stat(path); err != nil {
			return nil // a link to a directory or to nothing: not a file of the model
		}
		names = append(names, name)
		return nil
	})
	return names, err
}
