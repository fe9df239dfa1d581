// Package model checks that a model's files are the ones that were published, before an engine
// loads them: against the Hugging Face cache's own content addresses, or against a SHA256SUMS
// manifest in the standard sha256sum format. Files hash in parallel, and a record of what was
// verified (each file's size, modification time and inode) lets an unchanged model pass
// without being read again.
package model

import (
	"cmp"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sync"
	"sync/atomic"
)

// ErrMismatch is wrapped by a verification that found a file whose content is not the one
// expected; ErrNoSource by one that found nothing to verify against.
var (
	ErrMismatch = errors.New("model files do not match")
	ErrNoSource = errors.New("nothing to verify the model against")
)

// ManifestName is the manifest of a plain model directory.
const ManifestName = "SHA256SUMS"

// The ways a file's expected digest is known.
const (
	// SourceHFCache: the Hugging Face cache names each blob by its content: the SHA-256 of a
	// large (LFS) file, the git blob hash (SHA-1 of "blob LEN\0" and the content) of a small one.
	SourceHFCache = "hf-cache"
	// SourceManifest: the directory's SHA256SUMS.
	SourceManifest = "SHA256SUMS"
)

// The digests a file can be checked with.
const (
	AlgoSHA256  = "sha256"
	AlgoGitSHA1 = "git-sha1"
)

var (
	sha256Hex = regexp.MustCompile(`^[0-9a-f]{64}$`)
	sha1Hex   = regexp.MustCompile(`^[0-9a-f]{40}$`)
)

// File is one file of a model and the digest it must have.
type File struct {
	// Name is the file's path in the model directory; Path where its content is read.
	Name, Path string
	Algo       string
	Want       string
}

// Result is how one file fared.
type Result struct {
	File
	Size int64
	Got  string
	OK   bool
	// Cached is set when the record showed the file unchanged since it last verified.
	Cached bool
	Err    string `json:",omitempty"`
	// Stat is what the file looked like when it was read, which a record keeps.
	Stat fileStat
}

// Report is a verification of a model directory.
type Report struct {
	Dir     string
	Source  string
	Files   []Result
	Hashed  int64 // bytes read
	Skipped int   // files the record vouched for
}

// Failed returns the files that did not verify.
func (r Report) Failed() []Result {
	var out []Result
	for _, f := range r.Files {
		if !f.OK {
			out = append(out, f)
		}
	}
	return out
}

// Options tune a verification.
type Options struct {
	// Workers hash files at once (0: the CPUs this process may use).
	Workers int
	// Record, if set, is the file of this model's verified record: files unchanged since they
	// verified are not read again, and the record is rewritten after the run, unless the run
	// is one share of several (Combine's caller records the whole).
	Record string
	// Share, when its Of is above 1, verifies only this share of the files: the files whose
	// index in the expected list, modulo Of, is Index. Nodes that read the same filesystem
	// each verify one share.
	Share Share
	// Progress, if set, counts the bytes hashed so far.
	Progress *atomic.Int64
}

// Share is one of Of parts of a model's files.
type Share struct{ Index, Of int }

// has tells whether the file at index i of the expected list is in the share.
func (s Share) has(i int) bool { return s.Of <= 1 || i%s.Of == s.Index }

// Expected lists the files of dir and their expected digests: from the Hugging Face cache when
// dir is a snapshot of it, else from dir's SHA256SUMS; ErrNoSource when neither is there.
func Expected(dir string) (string, []File, error) {
	if files, ok, err := fromHFCache(dir); err != nil || ok {
		return SourceHFCache, files, err
	}
	files, err := fromManifest(dir)
	return SourceManifest, files, err
}

// fromHFCache reads a snapshot directory of the Hugging Face cache (…/snapshots/REV), whose
// files are links to ../../blobs/NAME, NAME being the content's address. ok is false for a
// directory that is not such a snapshot.
func fromHFCache(dir string) ([]File, bool, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, false, err
	}
	if filepath.Base(filepath.Dir(abs)) != "snapshots" {
		return nil, false, nil
	}
	blobs := filepath.Join(filepath.Dir(filepath.Dir(abs)), "blobs")
	if fi, err := os.Stat(blobs); err != nil || !fi.IsDir() {
		return nil, false, nil
	}
	var files []File
	err = filepath.WalkDir(abs, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		name, _ := filepath.Rel(abs, path)
		if d.Type()&fs.ModeSymlink == 0 {
			return fmt.Errorf("%w: %s is not a link into the cache's blobs", ErrMismatch, name)
		}
		target, err := os.Readlink(path)
		if err != nil {
			return err
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(path), target)
		}
		if filepath.Dir(filepath.Clean(target)) != blobs {
			return fmt.Errorf("%w: %s links outside the cache's blobs (%s)", ErrMismatch, name, target)
		}
		blob := filepath.Base(target)
		f := File{Name: name, Path: path, Want: blob}
		switch {
		case sha256Hex.MatchString(blob):
			f.Algo = AlgoSHA256
		case sha1Hex.MatchString(blob):
			f.Algo = AlgoGitSHA1
		default:
			return fmt.Errorf("%w: %s: blob %q is not a content address", ErrMismatch, name, blob)
		}
		files = append(files, f)
		return nil
	})
	if err != nil {
		return nil, true, err
	}
	return files, true, nil
}

// fromManifest reads dir's SHA256SUMS.
func fromManifest(dir string) ([]File, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s is not a Hugging Face cache snapshot and has no %s (llm-agent model manifest writes one)", ErrNoSource, dir, ManifestName)
	}
	if err != nil {
		return nil, err
	}
	entries, err := ParseManifest(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, ManifestName), err)
	}
	files := make([]File, 0, len(entries))
	for _, e := range entries {
		files = append(files, File{Name: e.Name, Path: filepath.Join(dir, e.Name), Algo: AlgoSHA256, Want: e.Digest})
	}
	return files, nil
}

// Verify checks every file of dir against its expected digest, hashing files in parallel. A
// mismatch is not an error of the call: the report's Failed lists it.
func Verify(ctx context.Context, dir string, o Options) (Report, error) {
	source, all, err := Expected(dir)
	if err != nil {
		return Report{}, err
	}
	var files []File
	for i, f := range all {
		if o.Share.has(i) {
			files = append(files, f)
		}
	}
	rep := Report{Dir: dir, Source: source, Files: make([]Result, len(files))}
	rec := loadRecord(o.Record)
	var mu sync.Mutex
	err = parallel(ctx, len(files), cmp.Or(o.Workers, runtime.GOMAXPROCS(0)), func(ctx context.Context, i int) error {
		f := files[i]
		r := Result{File: f}
		st, err := stat(f.Path)
		r.Stat = st
		switch {
		case err != nil:
			r.Err = err.Error()
		case rec.vouches(f, st):
			r.Size, r.Got, r.OK, r.Cached = st.Size, f.Want, true, true
		default:
			r.Size = st.Size
			if r.Got, err = hashFile(ctx, f.Path, f.Algo, o.Progress); err != nil {
				r.Err = err.Error()
			} else {
				r.OK = r.Got == f.Want
			}
		}
		mu.Lock()
		defer mu.Unlock()
		rep.Files[i] = r
		if r.Cached {
			rep.Skipped++
		} else if r.Err == "" {
			rep.Hashed += r.Size
		}
		if r.OK {
			rec.add(f, st)
		}
		return ctx.Err()
	})
	if err != nil {
		return rep, err
	}
	if o.Record != "" && o.Share.Of <= 1 {
		if err := rec.save(o.Record); err != nil {
			return rep, err
		}
	}
	return rep, rep.Err()
}

// Err describes the report's failed files, naming the first; nil when every file verified.
func (r Report) Err() error {
	failed := r.Failed()
	if len(failed) == 0 {
		return nil
	}
	why := failed[0].Err
	if why == "" {
		why = fmt.Sprintf("%s %.12s…, expected %.12s…", failed[0].Algo, failed[0].Got, failed[0].Want)
	}
	return fmt.Errorf("%w: %s (%s; %d of %d files differ)", ErrMismatch, failed[0].Name, why, len(failed), len(r.Files))
}

// HashFile returns the hex digest of the file's content with algo.
func HashFile(ctx context.Context, path, algo string) (string, error) {
	return hashFile(ctx, path, algo, nil)
}

// hashFile is HashFile that counts the bytes it reads in progress, if set.
func hashFile(ctx context.Context, path, algo string, progress *atomic.Int64) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	h, err := newHash(algo, fi.Size())
	if err != nil {
		return "", err
	}
	buf := bufPool.Get().(*[]byte)
	defer bufPool.Put(buf)
	if _, err := io.CopyBuffer(io.MultiWriter(h, counter{progress}), ctxReader{ctx, f}, *buf); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// newHash returns the hash of algo for a file of size bytes: a git blob hash starts with the
// blob's header.
func newHash(algo string, size int64) (hash.Hash, error) {
	switch algo {
	case AlgoSHA256:
		return sha256.New(), nil
	case AlgoGitSHA1:
		h := sha1.New()
		fmt.Fprintf(h, "blob %d\x00", size)
		return h, nil
	}
	return nil, fmt.Errorf("unknown digest %q", algo)
}
