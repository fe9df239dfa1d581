package model

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/llm-agent/llm-agent/agent/securefs"
	"github.com/llm-agent/llm-agent/jobfiles"
)

// ErrStage is wrapped by a staging that could not write the copy: a full or unwritable disk.
var ErrStage = errors.New("cannot stage the model")

// stagedMark is the staged copy's record: what it was copied from and what its files looked
// like when they were written and verified. A copy whose record still holds is reused.
const stagedMark = ".llm-agent-staged.json"

// StageOptions tune a staging.
type StageOptions struct {
	// Verify checks each file against the digest the source expects (Expected) as it copies
	// it; only the expected files are copied. Without it every file is copied as it is.
	Verify bool
	// Workers copy files at once (0: the CPUs this process may use).
	Workers int
	// Progress, if set, counts the bytes copied so far.
	Progress *atomic.Int64
}

// Staged is the outcome of a staging.
type Staged struct {
	Report
	// Dir is the copy; Total its size in bytes.
	Dir   string
	Total int64
	// Reused is set when a complete copy was already there and was kept.
	Reused bool
	// lock is held shared while the copy is in use (see Release).
	lock *os.File
}

// stagedFile is one file of a staged copy, in its record.
type stagedFile struct {
	Name   string   `json:"name"`
	Algo   string   `json:"algo"`
	Digest string   `json:"digest"`
	Source fileStat `json:"source"`
	Copy   fileStat `json:"copy"`
}

type stagedRecord struct {
	Source string       `json:"source"`
	Files  []stagedFile `json:"files"`
}

// StageRoot is this user's directory under a stage directory: made 0700 if missing, and
// refused if another user made it or may write to it.
func StageRoot(stageDir string) (string, error) {
	if fi, err := os.Stat(stageDir); err != nil || !fi.IsDir() {
		return "", fmt.Errorf("%w: stage directory %s is not a directory", ErrStage, stageDir)
	}
	root := filepath.Join(stageDir, fmt.Sprintf("llm-agent-%d", os.Getuid()))
	if err := securefs.EnsureDir(root); err != nil {
		return "", fmt.Errorf("%w: %w", ErrStage, err)
	}
	return root, nil
}

// StagePath is where the model in src is staged under root: a name of the model's and a hash of
// its absolute path, the same on every node.
func StagePath(root, src string) string {
	abs, err := filepath.Abs(src)
	if err != nil {
		abs = src
	}
	sum := sha256.Sum256([]byte(abs))
	name := filepath.Base(abs)
	if filepath.Base(filepath.Dir(abs)) == "snapshots" { // …/models--org--name/snapshots/REV
		name = strings.TrimPrefix(filepath.Base(filepath.Dir(filepath.Dir(abs))), "models--")
	}
	return filepath.Join(root, name+"-"+hex.EncodeToString(sum[:6]))
}

// Stage copies the model in src to dst on node-local disk, hashing each file in the same pass
// as it copies it, files in parallel. A copy at dst whose record still holds (the same source
// files, its own files unchanged) is reused without reading. The copy is made in a fresh
// directory beside dst and renamed into place once complete: a failed staging leaves nothing.
func Stage(ctx context.Context, src, dst string, o StageOptions) (Staged, error) {
	files, source, err := stageList(src, o.Verify)
	if err != nil {
		return Staged{}, err
	}
	out := Staged{Dir: dst, Report: Report{Dir: src, Source: source}}
	srcStats := make([]fileStat, len(files))
	for i, f := range files {
		if srcStats[i], err = stat(f.Path); err != nil {
			return Staged{}, err
		}
		out.Total += srcStats[i].Size
	}
	// A complete copy is used under the shared lock; the exclusive one is only for writing,
	// and the copy is looked at again once it is held, since another stager may have made it.
	lock, err := lockCopy(ctx, dst, syscall.LOCK_SH)
	if err != nil {
		return out, err
	}
	reused, err := awaitCopy(ctx, lock, &out, files, srcStats, o)
	if err == nil && !reused {
		err = writeCopy(ctx, &out, files, srcStats, o)
	}
	if err != nil {
		lock.Close()
		return out, err
	}
	// The lock stays held shared while the copy is in use, until Release.
	_ = syscall.Flock(int(lock.Fd()), syscall.LOCK_SH)
	out.lock = lock
	return out, nil
}

// awaitCopy reuses the copy at out.Dir when its record still holds (reused), or takes lock
// exclusive for writing a new one. While another stager holds it, this one waits, then looks
// again under the shared lock: the other may have written the copy this one wants. Users of an
// older copy hold it shared: the new one waits for them.
func awaitCopy(ctx context.Context, lock *os.File, out *Staged, files []File, srcStats []fileStat, o StageOptions) (reused bool, err error) {
	for exclusive := false; ; {
		if rep, ok := reuse(out.Dir, out.Report.Dir, files, srcStats); ok {
			out.Report.Files, out.Report.Skipped, out.Reused = rep, len(rep), true
			if o.Progress != nil {
				o.Progress.Add(out.Total)
			}
			return true, nil
		}
		if exclusive {
			return false, nil
		}
		held, err := tryFlock(lock, syscall.LOCK_EX)
		if err != nil {
			return false, err
		}
		if held {
			exclusive = true
			continue
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(lockPollInterval):
		}
		if err := flockWait(ctx, lock, syscall.LOCK_SH); err != nil {
			return false, err
		}
	}
}

// writeCopy copies and hashes files into a fresh directory beside out.Dir, records them, and
// renames the directory into place; a failure leaves nothing behind.
func writeCopy(ctx context.Context, out *Staged, files []File, srcStats []fileStat, o StageOptions) error {
	dst := out.Dir
	if err := checkSpace(filepath.Dir(dst), out.Total); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dst), filepath.Base(dst)+".partial-")
	if err != nil {
		return fmt.Errorf("%w: %w", ErrStage, err)
	}
	placed := false
	defer func() {
		if !placed {
			os.RemoveAll(tmp)
		}
	}()
	mark := stagedRecord{Source: out.Report.Dir, Files: make([]stagedFile, len(files))}
	out.Report.Files = make([]Result, len(files))
	var hashed atomic.Int64
	err = parallel(ctx, len(files), cmp.Or(o.Workers, runtime.GOMAXPROCS(0)), func(ctx context.Context, i int) error {
		f := files[i]
		r := Result{File: f, Size: srcStats[i].Size, Stat: srcStats[i]}
		copyStat, err := copyHashed(ctx, f, filepath.Join(tmp, f.Name), &r, o.Progress)
		if err != nil {
			return err
		}
		hashed.Add(r.Size)
		out.Report.Files[i] = r
		mark.Files[i] = stagedFile{Name: f.Name, Algo: f.Algo, Digest: r.Got, Source: srcStats[i], Copy: copyStat}
		return nil
	})
	out.Report.Hashed = hashed.Load()
	if err != nil {
		return err
	}
	if err := out.Report.Err(); err != nil {
		return err
	}
	b, err := json.Marshal(mark)
	if err != nil {
		return err
	}
	if err := jobfiles.WriteFileAtomic(filepath.Join(tmp, stagedMark), b, 0o600); err != nil {
		return fmt.Errorf("%w: %w", ErrStage, err)
	}
	if err := os.RemoveAll(dst); err != nil {
		return fmt.Errorf("%w: remove the stale copy: %w", ErrStage, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("%w: %w", ErrStage, err)
	}
	placed = true
	return nil
}

// stageList is what a staging copies: with verification, the files the source expects (the
// manifest too, so that the copy verifies by itself); without, every regular file.
func stageList(src string, verify bool) ([]File, string, error) {
	if verify {
		source, files, err := Expected(src)
		if err != nil {
			return nil, "", err
		}
		if source == SourceManifest {
			files = append(files, File{Name: ManifestName, Path: filepath.Join(src, ManifestName), Algo: AlgoSHA256})
		}
		return files, source, nil
	}
	names, err := regularFiles(src)
	if err != nil {
		return nil, "", err
	}
	if len(names) == 0 {
		return nil, "", fmt.Errorf("%w: %s holds no file", ErrNoSource, src)
	}
	files := make([]File, 0, len(names))
	for _, name := range names {
		files = append(files, File{Name: name, Path: filepath.Join(src, name), Algo: AlgoSHA256})
	}
	return files, "", nil
}

// reuse tells whether dst is a complete copy of files, made from them as they are now, and
// unchanged since; it returns the files' results.
func reuse(dst, src string, files []File, srcStats []fileStat) ([]Result, bool) {
	b, err := securefs.ReadSecret(filepath.Join(dst, stagedMark), 64<<20)
	if err != nil {
		return nil, false
	}
	var mark stagedRecord
	if json.Unmarshal(b, &mark) != nil || mark.Source != src || len(mark.Files) != len(files) {
		return nil, false
	}
	out := make([]Result, len(files))
	for i, f := range files {
		m := mark.Files[i]
		if m.Name != f.Name || m.Algo != f.Algo || (f.Want != "" && m.Digest != f.Want) || m.Source != srcStats[i] {
			return nil, false
		}
		if st, err := stat(filepath.Join(dst, f.Name)); err != nil || st != m.Copy {
			return nil, false
		}
		out[i] = Result{File: f, Size: srcStats[i].Size, Got: m.Digest, OK: true, Cached: true, Stat: srcStats[i]}
	}
	return out, true
}

// copyHashed copies f to path, hashing what it reads, and records the digest in r: r.OK when
// it is the one expected, or when none is. It returns the copy's stat.
func copyHashed(ctx context.Context, f File, path string, r *Result, progress *atomic.Int64) (fileStat, error) {
	in, err := os.Open(f.Path)
	if err != nil {
		return fileStat{}, err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fileStat{}, stageErr(err)
	}
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fileStat{}, stageErr(err)
	}
	h, err := newHash(f.Algo, r.Size)
	if err != nil {
		out.Close()
		return fileStat{}, err
	}
	buf := bufPool.Get().(*[]byte)
	defer bufPool.Put(buf)
	w := io.MultiWriter(out, h, counter{progress})
	if _, err := io.CopyBuffer(w, ctxReader{ctx, in}, *buf); err != nil {
		out.Close()
		return fileStat{}, stageErr(err)
	}
	if err := out.Close(); err != nil {
		return fileStat{}, stageErr(err)
	}
	r.Got = hex.EncodeToString(h.Sum(nil))
	r.OK = f.Want == "" || r.Got == f.Want
	return stat(path)
}

// stageErr names a full disk as such.
func stageErr(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: the stage directory is full: %w", ErrStage, err)
	}
	var pe *fs.PathError
	if errors.As(err, &pe) && pe.Op != "read" {
		return fmt.Errorf("%w: %w", ErrStage, err)
	}
	return err
}

// checkSpace refuses a staging that the disk under dir has no room for.
func checkSpace(dir string, need int64) error {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		return fmt.Errorf("%w: %w", ErrStage, err)
	}
	if free := int64(fs.Bavail) * fs.Bsize; free < need {
		return fmt.Errorf("%w: %s has %d MiB free and the model needs %d MiB", ErrStage, dir, free>>20, (need+1<<20-1)>>20)
	}
	return nil
}
